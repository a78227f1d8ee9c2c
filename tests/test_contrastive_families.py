"""Every contrastive family of transformers (a model with get_image_features and get_text_features) runs
through the one contrastive backend with no config line: scores are the model's own logits_per_image
(softmax, or sigmoid for SigLIP-style models), batch size changes nothing, and a checkpoint that does not
hold the model's weights is a one-line error, not a NaN.

Each family is a tiny real checkpoint built offline as the hub lays it out (processor files saved with
``save_pretrained``, tokenizers built from a hand-made vocabulary).
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mmcli.testing import contrastive as testing
from tests.conftest import built_once

WORDS = ["a", "photo", "of", "this", "is", "cat", "dog", "bird", "car", "red", "green", "blue", "circle"]
LABELS = ["cat", "dog", "red circle"]
TEMPLATE = "a photo of a {}."
SIDE = 32
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
VISION |= {"image_size": SIDE, "patch_size": 8}
SQUARE = {"size": {"height": SIDE, "width": SIDE}, "crop_size": {"height": SIDE, "width": SIDE}}


# -- tokenizers, built offline --------------------------------------------------------------------------
def bert_tokenizer() -> Any:
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)}, model_max_length=64)


def xlmr_tokenizer() -> Any:
    """XLM-RoBERTa's unigram model (AltCLIP, MetaCLIP 2): one piece per word, letters for the rest."""
    from transformers import XLMRobertaTokenizer

    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [("▁", -2.0), (".", -2.0)]
    pieces += [(c, -5.0) for c in string.ascii_lowercase] + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=pieces, model_max_length=64)


def siglip2_tokenizer() -> Any:
    """SigLIP2's Gemma-style BPE (left padding, byte fallback): letters, and merges that build each word."""
    from transformers import Siglip2Tokenizer

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁", "."])}
    vocab |= {c: len(vocab) + i for i, c in enumerate(string.ascii_lowercase)}
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        left = "▁"
        for c in word:
            merges.append((left, c))
            left += c
            vocab.setdefault(left, len(vocab))
    return Siglip2Tokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=64)


def text_config(tok: Any, **extra: Any) -> dict[str, Any]:
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    return (
        sizes
        | {"vocab_size": len(tok), "max_position_embeddings": 64, "pad_token_id": tok.pad_token_id}
        | extra
    )


# -- checkpoints -------------------------------------------------------------------------------------------
def save(directory: Path, model: Any, processor: Any) -> Path:
    model.eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def build(
    directory: Path,
    model: str,
    processor: str,
    images: Any,
    tok: Any,
    *,
    text: dict[str, Any] | None = None,
    vision: dict[str, Any] = VISION,
    fix: Callable[[Any], None] | None = None,
    **config: Any,
) -> Path:
    """``model`` (a transformers class name) from its config class, and ``processor`` around the image
    processor (a class name: square ``SIDE`` px) and the tokenizer; ``fix`` adjusts the random weights."""
    import transformers as t

    torch.manual_seed(0)
    cls = getattr(t, model)
    instance = cls(
        cls.config_class(text_config=text_config(tok, **(text or {})), vision_config=vision, **config)
    )
    if fix is not None:
        with torch.no_grad():
            fix(instance)
    image_processor = getattr(t, images)(**SQUARE) if isinstance(images, str) else images
    return save(directory, instance, getattr(t, processor)(image_processor=image_processor, tokenizer=tok))


def with_clip_tokenizer(directory: Path, model: str, processor: str, images: str, **config: Any) -> Path:
    tok = testing.clip_tokenizer(WORDS)
    text = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "max_position_embeddings": 77}
    return build(directory, model, processor, images, tok, text=text, projection_dim=16, **config)


def with_bert_tokenizer(directory: Path, model: str, processor: str, images: str, **config: Any) -> Path:
    tok = bert_tokenizer()
    text = {"bos_token_id": tok.cls_token_id, "sep_token_id": tok.sep_token_id}
    return build(directory, model, processor, images, tok, text=text, **{"projection_dim": 16} | config)


def with_xlmr_tokenizer(directory: Path, model: str, processor: str, **text: Any) -> Path:
    text |= {"bos_token_id": 0, "eos_token_id": 2}
    return build(
        directory, model, processor, "CLIPImageProcessorPil", xlmr_tokenizer(), text=text, projection_dim=16
    )


def build_siglip2(directory: Path) -> Path:
    """NaFlex: aspect-preserving patches, padded to max_num_patches, with their mask and spatial shapes."""
    from transformers import Siglip2ImageProcessorPil

    images = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)
    vision = {k: v for k, v in VISION.items() if k != "image_size"} | {"num_patches": 16}
    return build(
        directory, "Siglip2Model", "Siglip2Processor", images, siglip2_tokenizer(),
        text={"projection_size": 32}, vision=vision, fix=lambda m: (m.logit_scale.fill_(2.3), m.logit_bias.fill_(-1.5)),
    )  # fmt: skip


def _he_init(model: Any) -> None:
    """Random init makes the tiny EfficientNet's features vanish (~1e-29); a trained scale keeps them."""
    for module in model.vision_model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.weight.fill_(1.0)
    model.temperature.fill_(0.1)


def build_vision_text_dual_encoder(directory: Path) -> Path:
    import transformers as t

    tok = bert_tokenizer()
    config = t.VisionTextDualEncoderConfig.from_vision_text_configs(
        t.ViTConfig(**VISION), t.BertConfig(**text_config(tok)), projection_dim=16
    )
    torch.manual_seed(0)
    processor = t.VisionTextDualEncoderProcessor(
        image_processor=t.ViTImageProcessorPil(**SQUARE), tokenizer=tok
    )
    return save(directory, t.VisionTextDualEncoderModel(config), processor)


build_clip = partial(testing.build_clip, words=WORDS)
ALIGN_VISION = {"image_size": SIDE, "width_coefficient": 0.25, "depth_coefficient": 0.25, "hidden_dim": 32}
# family -> (builder, the scoring the model implies, transformers' zero-shot pipeline supports it)
FAMILIES: dict[str, tuple[Callable[[Path], Path], str, bool]] = {
    "clip": (build_clip, "softmax", True),
    "siglip": (testing.build_siglip, "sigmoid", True),
    "siglip2": (build_siglip2, "sigmoid", True),
    "chinese_clip": (partial(with_bert_tokenizer, model="ChineseCLIPModel", processor="ChineseCLIPProcessor", images="ChineseCLIPImageProcessorPil"), "softmax", True),
    "align": (partial(with_bert_tokenizer, model="AlignModel", processor="AlignProcessor", images="EfficientNetImageProcessorPil", vision=ALIGN_VISION, projection_dim=80, fix=_he_init), "softmax", True),
    "altclip": (partial(with_xlmr_tokenizer, model="AltCLIPModel", processor="AltCLIPProcessor", project_dim=16, max_position_embeddings=72), "softmax", True),
    "blip": (partial(with_bert_tokenizer, model="BlipModel", processor="BlipProcessor", images="BlipImageProcessorPil"), "softmax", True),
    "metaclip_2": (partial(with_xlmr_tokenizer, model="MetaClip2Model", processor="CLIPProcessor"), "softmax", True),
    "aimv2": (partial(with_clip_tokenizer, model="Aimv2Model", processor="CLIPProcessor", images="CLIPImageProcessorPil"), "softmax", False),
    "owlvit": (partial(with_clip_tokenizer, model="OwlViTModel", processor="OwlViTProcessor", images="OwlViTImageProcessorPil"), "softmax", False),
    "clipseg": (partial(with_clip_tokenizer, model="CLIPSegModel", processor="CLIPSegProcessor", images="ViTImageProcessorPil"), "softmax", True),
    "vision-text-dual-encoder": (build_vision_text_dual_encoder, "softmax", False),
}  # fmt: skip
CAPTIONER = partial(with_bert_tokenizer, model="BlipForConditionalGeneration", processor="BlipProcessor", images="BlipImageProcessorPil")  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """family -> its tiny checkpoint, built on first use."""
    return built_once(tmp_path_factory, lambda family, out: FAMILIES[family][0](out))


def files(image_dir: Path) -> list[str]:
    """Five images of five sizes and aspect ratios (SigLIP2 gives each its own spatial shape)."""
    suffixes = {".jpg", ".png", ".webp", ".bmp"}
    return sorted(str(p) for p in image_dir.rglob("*") if p.suffix in suffixes and not p.name.startswith("."))


def spec_of(directory: Path) -> Any:
    """The spec the registry gives a local checkpoint of a contrastive family (built by hand)."""
    import json

    from mmcli.modeling.registry import ModelSpec

    model_type = json.loads((directory / "config.json").read_text())["model_type"]
    return ModelSpec(name=str(directory), family="clip", checkpoint=str(directory), model_type=model_type)


def backend_of(directory: Path) -> Any:
    from mmcli.modeling.backends.clip import ClipBackend
    from mmcli.modeling.runtime import resolve

    return ClipBackend(spec_of(directory), resolve("cpu", "fp32"))


def model_scores(directory: Path, paths: list[str], scoring: str) -> torch.Tensor:
    """(N, L) from the model's own forward: softmax or sigmoid of logits_per_image, texts tokenized as
    transformers' zero-shot pipeline does."""
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(directory).eval(), AutoProcessor.from_pretrained(directory)
    images = [Image.open(p).convert("RGB") for p in paths]
    texts = [TEMPLATE.format(label) for label in LABELS]
    padding = {"padding": "max_length", "max_length": 64} if scoring == "sigmoid" else {"padding": True}
    inputs = {**processor.image_processor(images=images, return_tensors="pt")}
    inputs |= processor.tokenizer(texts, return_tensors="pt", truncation=True, **padding)
    accepted = inspect.signature(model.forward).parameters
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k in accepted}).logits_per_image
    return torch.sigmoid(logits) if scoring == "sigmoid" else logits.softmax(dim=-1)


# -- the backend, called directly (no registry dispatch needed) ---------------------------------------------
def embed_and_score(
    backend: Any, paths: list[str], one_by_one: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embeddings (in one batch, or one image per batch) and the label probabilities mmcli gives."""
    from mmcli.modeling import tasks

    parts = [backend.preprocess([Image.open(p).convert("RGB")]) for p in paths]
    batches = [[part] for part in parts] if one_by_one else [parts]
    images = torch.cat([backend.encode_images(backend.collate(batch)) for batch in batches])
    text = backend.encode_texts([TEMPLATE.format(label) for label in LABELS])
    scale, bias = backend.logit_scale, backend.logit_bias
    return images, tasks.label_probabilities(images, text, scale, bias, backend.scoring)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_backend_scores_are_the_models_own(family, checkpoints, image_dir):
    directory, scoring, in_pipeline = checkpoints(family), *FAMILIES[family][1:]
    backend = backend_of(directory)
    assert backend.scoring == scoring
    paths = files(image_dir)
    batched, probs = embed_and_score(backend, paths)
    torch.testing.assert_close(
        batched, embed_and_score(backend, paths, one_by_one=True)[0], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(probs, model_scores(directory, paths, scoring), atol=1e-5, rtol=0)
    if in_pipeline:
        from transformers import pipeline

        pipe = pipeline("zero-shot-image-classification", model=str(directory))
        results = pipe(paths, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
        for row, result in zip(probs, results, strict=True):
            scores = {r["label"]: r["score"] for r in result}
            assert [scores[label] for label in LABELS] == pytest.approx(row.tolist(), abs=1e-5)


def test_scale_bias_and_text_settings_come_from_the_checkpoint(checkpoints):
    align = backend_of(checkpoints("align"))
    assert align.logit_scale == pytest.approx(10.0) and align.logit_bias == 0.0  # 1 / temperature
    assert align.text_kwargs["max_length"] == 64  # AlignProcessor's own text defaults
    siglip2 = backend_of(checkpoints("siglip2"))
    assert (siglip2.logit_scale, siglip2.logit_bias) == pytest.approx((float(np.exp(2.3)), -1.5), rel=1e-5)
    assert siglip2.text_kwargs == {"padding": "max_length", "truncation": True, "max_length": 64}
    altclip = backend_of(checkpoints("altclip"))  # the tokenizer's limit, under the 72 positions
    assert altclip.text_kwargs == {"padding": True, "truncation": True, "max_length": 64}


def test_siglip_needs_no_config_line(checkpoints, monkeypatch):
    import mmcli.modeling.backends.clip

    monkeypatch.setattr(mmcli.modeling.backends.clip, "model_type_entry", lambda model_type: {})
    backend = backend_of(checkpoints("siglip"))  # a logit bias: sigmoid, texts padded to the context
    assert backend.scoring == "sigmoid"
    assert backend.text_kwargs == {"padding": "max_length", "truncation": True, "max_length": 64}


def test_config_overrides_what_the_checkpoint_implies(checkpoints):
    from dataclasses import replace

    from mmcli.modeling.backends.clip import ClipBackend
    from mmcli.modeling.runtime import resolve

    options = {"scoring": "softmax", "text_padding": True, "text_max_length": 16}
    backend = ClipBackend(replace(spec_of(checkpoints("siglip2")), options=options), resolve("cpu", "fp32"))
    assert backend.scoring == "softmax"
    assert backend.text_kwargs == {"padding": True, "truncation": True, "max_length": 16}


def test_siglip2_keeps_its_patch_mask_and_shapes(checkpoints, image_dir):
    backend = backend_of(checkpoints("siglip2"))
    parts = [backend.preprocess([Image.open(p).convert("RGB")]) for p in files(image_dir)]
    assert set(parts[0]) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    assert len({tuple(p["spatial_shapes"][0].tolist()) for p in parts}) > 1  # aspect ratios differ
    short = {key: value[:, :9] if key != "spatial_shapes" else value for key, value in parts[0].items()}
    batch = backend.collate([short, parts[1]])  # fewer patches pad with zeros, masked out
    assert batch["pixel_values"].shape == (2, 16, 192) and batch["pixel_attention_mask"][0, 9:].sum() == 0


def test_captioning_checkpoint_is_refused_not_scored(tmp_path):
    from mmcli.errors import ModelLoadError

    with pytest.raises(ModelLoadError) as caught:
        backend_of(CAPTIONER(tmp_path / "cap"))
    message = caught.value.message
    assert "weights of BlipModel are missing from the checkpoint" in message
    assert "(it holds a BlipForConditionalGeneration?)" in message and "\n" not in message


def test_task_head_checkpoint_runs_its_base_model(tmp_path, image_dir):
    """A CLIPSeg segmentation checkpoint holds all of CLIPSegModel; only its decoder goes unused."""
    seg = with_clip_tokenizer(
        tmp_path / "seg", "CLIPSegForImageSegmentation", "CLIPSegProcessor", "ViTImageProcessorPil"
    )
    paths = files(image_dir)[:2]
    probs = embed_and_score(backend_of(seg), paths)[1]
    torch.testing.assert_close(probs, model_scores(seg, paths, "softmax"), atol=1e-5, rtol=0)


def test_weights_the_model_does_not_have_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from mmcli.errors import ModelLoadError

    clip = build_clip(tmp_path / "clip")
    weights = load_file(clip / "model.safetensors") | {"extra_head.weight": torch.zeros(2, 2)}
    save_file(weights, clip / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="1 weights in the checkpoint are not used by CLIPModel"):
        backend_of(clip)


def test_a_checkpoint_may_lack_counters_but_not_running_statistics(checkpoints, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from mmcli.errors import ModelLoadError

    align = shutil.copytree(checkpoints("align"), tmp_path / "align")
    weights = load_file(align / "model.safetensors")
    counters = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    save_file(counters, align / "model.safetensors", metadata={"format": "pt"})
    backend_of(align)  # BatchNorm's batch counts: built by the model, not learned
    stats = {k: v for k, v in counters.items() if not k.endswith("embeddings.batchnorm.running_mean")}
    save_file(stats, align / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="1 weights of AlignModel are missing"):
        backend_of(align)


def test_a_model_without_a_logit_scale_is_not_contrastive(tiny_blip2):
    from mmcli.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="Blip2Model has neither a logit scale nor a temperature"):
        backend_of(tiny_blip2)


# -- through the CLI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cli_classify_and_embed_any_batch_size(family, cli, checkpoints, image_dir):
    directory, scoring = checkpoints(family), FAMILIES[family][1]
    paths = files(image_dir)
    runs = {}
    for size in ("1", "3"):
        args = ("--model", directory, "--batch-size", size, "--no-cache")
        classify = cli("classify", *paths, "--labels", ",".join(LABELS), "--template", TEMPLATE, *args)
        embed = cli("embed", *paths, *args)
        assert classify.code == 0 and embed.code == 0, classify.stderr + embed.stderr
        runs[size] = (classify.jsonl(), embed.jsonl())
    expected = model_scores(directory, paths, scoring)
    for one, three, row in zip(runs["1"][0], runs["3"][0], expected, strict=True):
        assert one["label"] == three["label"] == LABELS[int(row.argmax())]
        assert [one["scores"][label] for label in LABELS] == pytest.approx(row.tolist(), abs=1e-5)
        assert [three["scores"][label] for label in LABELS] == pytest.approx(row.tolist(), abs=1e-5)
    for one, three in zip(runs["1"][1], runs["3"][1], strict=True):
        assert one["input"] == three["input"]
        assert one["embedding"] == pytest.approx(three["embedding"], abs=1e-5)
        assert float(np.linalg.norm(one["embedding"])) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("command", ["classify", "embed"])
def test_cli_captioning_checkpoint_is_a_one_line_error(command, cli, tmp_path, image_dir):
    """A captioner's weights under a config that says BlipModel (or an alias that puts a captioner in the
    clip family) reach the contrastive backend: an error, where it used to score NaN."""
    import json

    directory = CAPTIONER(tmp_path / "cap")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"architectures": ["BlipModel"]}))
    labels = ("--labels", ",".join(LABELS)) if command == "classify" else ()
    result = cli(command, files(image_dir)[0], *labels, "--model", directory)
    assert result.code == 1 and result.stdout == b"", result.stderr
    assert "weights of BlipModel are missing from the checkpoint" in result.stderr.splitlines()[0]
    assert "nan" not in result.stderr.lower()
