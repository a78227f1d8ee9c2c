"""Shared by the shapes training scripts: seeds, pools of rendered images, tokenizers, prompts.

Seeds: training images come from ``mmcli.testing.shapes.scene(seed)`` with seeds below ``EVAL_SEED0``; the
benchmark (bench/shapes_accuracy.py) uses seeds from ``BENCH_SEED0`` up, the scripts' own held-out checks
seeds from ``EVAL_SEED0``: the three ranges never meet.

Images reach the models exactly as mmcli's processors give them: squashed (not cropped) to 64×64 with
PIL's bicubic filter, scaled to [0, 1] and normalised with CLIP's mean and std. ``preprocess`` below is
checked against the saved processor (identical output) by the scripts.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mmcli.testing import shapes  # noqa: E402

MODELS = ROOT / "models"
IMAGE_SIZE = 64
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
EVAL_SEED0 = 2_000_000_000  # the training scripts' held-out checks
BENCH_SEED0 = 3_000_000_000  # bench/shapes_accuracy.py
LABELS = shapes.labels()
COLOURS = list(shapes.COLOURS)
SHAPES = list(shapes.SHAPES)

# -- prompts the generative models are trained on (and mmcli renders) --------------------------------
CAPTION = "a {colour} {shape}"
COLOUR_QUESTIONS = ["What color is the shape?", "What colour is the shape?", "What color is it?"]
SHAPE_QUESTIONS = ["What shape is it?", "What shape is this?", "Which shape is it?"]
CLASSIFY_QUESTION = "What is in this image?"  # the alias's classify_prompt; answer "<colour> <shape>"
LLAVA_CAPTION_PROMPT = "Describe this image in one sentence."  # the llava family's caption_prompt


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


# -- images ---------------------------------------------------------------------------------------------
def augmented(seed: int, rng: random.Random) -> tuple[Image.Image, shapes.Scene]:
    """A training rendering of scene ``seed``: drawn at a reduced size (the processor squashes it to
    64×64 anyway), then sometimes JPEG-compressed, with a light brightness / contrast / saturation jitter.
    """
    scene = shapes.scene(seed)
    # What the squash to 64×64 keeps is the same at any size over ~128 px; JPEG artefacts grow as the
    # size shrinks, so drawing small is a harder, not an easier, version of the full image.
    scale = min(1.0, rng.uniform(72, 256) / max(scene.width, scene.height))
    size = (max(8, round(scene.width * scale)), max(8, round(scene.height * scale)))
    image = scene.render(size=size)
    if rng.random() < 0.5:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.08))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.9, 1.1))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.85, 1.15))
    if rng.random() < 0.4:
        image = jpeg(image, rng.randint(25, 95))
    return image, scene


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def squash(image: Image.Image) -> np.ndarray:
    """uint8 (3, 64, 64): the processor's resize, before scaling and normalisation."""
    small = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(small, dtype=np.uint8).transpose(2, 0, 1))


def normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 (..., 3, H, W) -> float32 normalised as CLIPImageProcessor does."""
    x = pixels.astype(np.float32) / 255.0
    return (x - MEAN[:, None, None]) / STD[:, None, None]


def preprocess(image: Image.Image) -> np.ndarray:
    return normalise(squash(image))


def _render_chunk(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    first, count, salt = args
    pixels = np.empty((count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = np.empty((count,), dtype=np.int16)
    for i in range(count):
        seed = first + i
        image, scene = augmented(seed, random.Random(seed * 7919 + salt))
        pixels[i] = squash(image)
        labels[i] = LABELS.index(scene.label)
    return pixels, labels


def render_pool(
    first_seed: int, count: int, processes: int = 2, salt: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` augmented training images (uint8, squashed to 64×64) and their label indices."""
    chunk = 2000
    jobs = [(first_seed + s, min(chunk, count - s), salt) for s in range(0, count, chunk)]
    if processes > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(processes) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(job) for job in jobs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def eval_set(count: int, first_seed: int = EVAL_SEED0) -> tuple[list[Image.Image], list[shapes.Scene]]:
    """Full-size held-out renderings, every third one JPEG-compressed (quality 60-95)."""
    images, scenes = [], []
    for i in range(count):
        scene = shapes.scene(first_seed + i)
        image = scene.render()
        if i % 3 == 2:
            image = jpeg(image, 60 + (i * 7) % 36)
        images.append(image)
        scenes.append(scene)
    return images, scenes


def dihedral(batch: np.ndarray | object, code: int) -> object:
    """One of the 8 flips / transposes of a (N, C, H, W) torch tensor (shape classes do not change)."""
    x = batch
    if code & 1:
        x = x.flip(-1)  # type: ignore[attr-defined]
    if code & 2:
        x = x.flip(-2)  # type: ignore[attr-defined]
    if code & 4:
        x = x.transpose(-1, -2)  # type: ignore[attr-defined]
    return x


# -- tokenizers -------------------------------------------------------------------------------------------
def learn_merges(words: list[list[str]]) -> list[tuple[str, str]]:
    """Plain BPE training on a word list until every word is one symbol (ties: the smallest pair).

    Encoding a training word with these merges, in this order, gives back that single symbol.
    """
    seqs = [list(w) for w in dict.fromkeys(tuple(w) for w in words)]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for seq in seqs:
            for pair in itertools.pairwise(seq):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for s, seq in enumerate(seqs):
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[s] = out


CLIP_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "this",
    "is",
    "it",
    "photo",
    "picture",
    "image",
    "drawing",
    "rendering",
    "shape",
    "plain",
    "background",
    "simple",
    "colour",
    "color",
    "one",
    "single",
]


def clip_tokenizer() -> object:
    """A byte-level CLIP BPE tokenizer where every word of the shapes world is one token."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for c in alphabet:
        vocab[c] = len(vocab)
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    words = list(dict.fromkeys(CLIP_WORDS + COLOURS + SHAPES))
    merges = learn_merges([[*w[:-1], w[-1] + "</w>"] for w in words])
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    for word in words:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    return tok


GEN_WORDS = [
    "USER",
    "ASSISTANT",
    "Question",
    "Answer",
    "What",
    "Which",
    "Describe",
    "What's",
    "Is",
    "How",
    "What",
    "color",
    "colour",
    "is",
    "the",
    "shape",
    "it",
    "this",
    "in",
    "image",
    "one",
    "sentence",
    "a",
    "an",
    "of",
    "and",
    "There",
    "there",
    "picture",
    "photo",
    "on",
    "background",
]


def llama_tokenizer() -> object:
    """Llama BPE (byte fallback, ``▁`` before the first word only) with whole-word tokens, plus <image>."""
    from tokenizers import AddedToken
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    chars = "▁" + "".join(
        sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?!'()-"))
    )
    for c in chars:
        vocab[c] = len(vocab)
    words = list(dict.fromkeys(GEN_WORDS + COLOURS + SHAPES))
    spelled = ["▁" + w for w in words] + words
    merges = learn_merges([list(w) for w in spelled])
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<pad>", legacy=False, add_bos_token=True)
    tok.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    return tok


def opt_tokenizer() -> object:
    """OPT's byte-level BPE (GPT2Tokenizer) with whole-word tokens, ``</s>`` as BOS and EOS, plus <image>."""
    from tokenizers import AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2Tokenizer

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    words = list(dict.fromkeys(GEN_WORDS + COLOURS + SHAPES))
    spelled = ["Ġ" + w for w in words] + words
    merges = learn_merges([list(w) for w in spelled])
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )
    tok.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    return tok


def lr_at(step: int, total: int, peak: float, warmup: float = 0.04) -> float:
    """Linear warm-up over ``warmup`` of the steps, then cosine to zero."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    return peak * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def quiet() -> None:
    """No progress bars, no torchvision fallback warnings, no hub access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def save(model: object, processor: object, out: str | Path) -> None:
    """save_pretrained (safetensors) of the model and its processor, written atomically-enough: a
    temporary directory, then renamed over ``out``."""
    import shutil

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    was_training = model.training  # type: ignore[attr-defined]
    model.eval()  # type: ignore[attr-defined]
    model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[attr-defined]
    processor.save_pretrained(tmp)  # type: ignore[attr-defined]
    if was_training:
        model.train()  # type: ignore[attr-defined]
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
