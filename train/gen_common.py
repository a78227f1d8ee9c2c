"""What the two generative training scripts (train_llava.py, train_blip2.py) share.

Both freeze a vision tower that already knows the world (shapes-clip's), cache its outputs for a pool of
renderings once, and train only what sits on top (LLaVA: projector + Llama; BLIP-2: Q-Former + projection
+ OPT) on four tasks per image, with the prompts exactly as mmcli renders them:

- caption: the family's caption prompt (LLaVA: "Describe this image in one sentence."; BLIP-2: none, the
  image alone) -> "a red circle"
- colour:  one of COLOUR_QUESTIONS through the question template -> "red"
- shape:   one of SHAPE_QUESTIONS -> "circle"
- classify: CLASSIFY_QUESTION -> "red circle" (generative classify scores each label as this answer)

The loss is on the answer tokens and the EOS only. Each example's prompt tokens are checked to be an
exact prefix of prompt + " " + answer, as mmcli's label scoring assumes.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import common as C
import torch

TASKS = ("caption", "colour", "shape", "classify")


@dataclass
class Example:
    prompt: list[int]  # token ids as mmcli builds them, the image token(s) included
    answer: list[int]  # answer tokens + EOS


def answer_text(task: str, colour: str, shape: str) -> str:
    if task == "caption":
        return C.CAPTION.format(colour=colour, shape=shape)
    if task == "colour":
        return colour
    if task == "shape":
        return shape
    return f"{colour} {shape}"


def question(task: str, rng: random.Random) -> str | None:
    """The question of a task (None: the caption prompt)."""
    if task == "caption":
        return None
    if task == "colour":
        return rng.choice(C.COLOUR_QUESTIONS)
    if task == "shape":
        return rng.choice(C.SHAPE_QUESTIONS)
    return C.CLASSIFY_QUESTION


class ExampleMaker:
    """Token ids of (task, question, colour, shape), cached; ``render`` is mmcli's prompt text."""

    def __init__(
        self, tok: object, render: Callable[[str | None], str], expand: Callable[[list[int]], list[int]]
    ):
        self.tok = tok
        self.render = render
        self.expand = expand  # the image token -> the model's image span
        self.cache: dict[tuple[str | None, str], Example] = {}

    def ids(self, text: str) -> list[int]:
        bos = self.tok.bos_token  # type: ignore[attr-defined]
        special = not (bos and text.startswith(bos))
        return list(self.tok(text, add_special_tokens=special)["input_ids"])  # type: ignore[operator]

    def __call__(self, prompt: str | None, answer: str) -> Example:
        key = (prompt, answer)
        if key not in self.cache:
            text = self.render(prompt)
            prompt_ids = self.ids(text)
            sep = "" if not text or text[-1].isspace() else " "
            full = self.ids(text + sep + answer)
            if full[: len(prompt_ids)] != prompt_ids:
                raise AssertionError(f"prompt tokens are not a prefix: {text!r} + {answer!r}")
            answer_ids = [*full[len(prompt_ids) :], self.tok.eos_token_id]  # type: ignore[attr-defined]
            self.cache[key] = Example(self.expand(prompt_ids), answer_ids)
        return self.cache[key]


def batch_tensors(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and labels (-100 except on answer tokens)."""
    width = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for r, e in enumerate(examples):
        row = e.prompt + e.answer
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
        labels[r, len(e.prompt) : len(row)] = torch.tensor(e.answer)
    return ids, mask, labels


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits[:, t] predicts labels[:, t + 1]."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def cache_features(
    encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, batch: int = 256
) -> torch.Tensor:
    """Frozen tower outputs for a uint8 pool, in batches."""
    mean = torch.tensor(C.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(C.STD).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch):
            x = (pixels[start : start + batch].float() / 255.0 - mean) / std
            out.append(encode(x).to(torch.float16))
    return torch.cat(out)


def mmcli_accuracy(
    model_dir: str, count: int, classify_count: int, log: Callable[[str], None]
) -> dict[str, float]:
    """Caption / vqa / generative-classify accuracy through mmcli's own backend (in process)."""
    from mmcli.modeling import registry, runtime
    from mmcli.modeling.backends.base import GenerateOptions, LoadOptions

    spec = registry.resolve(model_dir)
    backend = registry.create_backend(spec, runtime.resolve("cpu", "fp32"), LoadOptions())  # type: ignore[attr-defined]
    images, scenes = C.eval_set(count, C.EVAL_SEED0 + 10_000)
    options = GenerateOptions(max_new_tokens=12)
    hits = {"caption": 0, "colour": 0, "shape": 0, "classify": 0}
    t0 = time.time()
    for start in range(0, count, 50):
        chunk, truth = images[start : start + 50], scenes[start : start + 50]
        batch = backend.preprocess(chunk)
        n = len(chunk)
        captions = backend.generate(batch, [None] * n, GenerateOptions(max_new_tokens=12, raw_prompts=True))
        colours = backend.generate(batch, [C.COLOUR_QUESTIONS[0]] * n, options)
        shapes_ = backend.generate(batch, [C.SHAPE_QUESTIONS[0]] * n, options)
        for s, cap, col, sha in zip(truth, captions, colours, shapes_, strict=False):
            words = cap.lower().replace(".", " ").split()
            hits["caption"] += s.colour in words and s.shape in words
            hits["colour"] += col.strip().lower() == s.colour
            hits["shape"] += sha.strip().lower() == s.shape
        if start < classify_count:
            k = min(n, classify_count - start)
            sub = {key: v[:k] for key, v in batch.items()}
            scores = backend.score_labels(sub, C.CLASSIFY_QUESTION, C.LABELS)  # type: ignore[attr-defined]
            for s, row in zip(truth[:k], scores.argmax(-1).tolist(), strict=False):
                hits["classify"] += C.LABELS[row] == s.label
        if start == 0:
            log(
                f"  e.g. {truth[0].label}: caption {captions[0]!r}, colour {colours[0]!r}, shape {shapes_[0]!r}"
            )
    result = {k: v / count for k, v in hits.items() if k != "classify"}
    result["classify"] = hits["classify"] / max(1, min(count, classify_count))
    log(f"  mmcli check on {count} held-out images in {time.time() - t0:.0f} s: {result}")
    return result


def parser(description: str, out: str, steps: int) -> argparse.ArgumentParser:
    """The options both trainers take; each adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--clip", default=str(C.MODELS / "shapes-clip"))
    p.add_argument("--out", default=str(C.MODELS / out))
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pool", type=int, default=20_000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check", type=int, default=300, help="held-out images checked through mmcli")
    p.add_argument("--smoke", action="store_true")
    return p


def log(msg: str) -> None:
    print(msg, flush=True)


def report_parameters(model: torch.nn.Module, trainable: list[torch.nn.Parameter]) -> None:
    log(
        f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M, trained "
        f"{sum(p.numel() for p in trainable) / 1e6:.2f} M"
    )


def check_forward(
    model: torch.nn.Module,
    forward: Callable[..., torch.Tensor],
    make: ExampleMaker,
    pad_id: int,
    pixels: Any,
    feats: torch.Tensor,
    image_id: int,
) -> None:
    """The training forward (cached tower outputs) must equal the model's own forward on pixels."""
    ex = make(C.COLOUR_QUESTIONS[0], "red")
    ids, mask, _ = batch_tensors([ex], pad_id)
    x = torch.from_numpy(C.normalise(pixels[:1]))
    with torch.inference_mode():
        ref = model(input_ids=ids, attention_mask=mask, pixel_values=x).logits
        mine = forward(model, ids, mask, feats[:1].float(), image_id)
    assert ref.shape == mine.shape and torch.allclose(ref, mine, atol=2e-2), (ref - mine).abs().max()


def train_and_save(
    model: torch.nn.Module,
    processor: Any,
    trainable: list[torch.nn.Parameter],
    feats: torch.Tensor,
    labels: Any,
    make: Callable[[str | None, str], Example],
    forward: Callable[..., torch.Tensor],
    image_id: int,
    pad_id: int,
    args: Any,
    seed: int,
    t0: float,
    bf16: bool = False,
) -> None:
    """The step loop both trainers share (the four tasks drawn per example, answer-only loss, clipped
    AdamW with the warmup-cosine schedule), then save and check through mmcli."""
    optim = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng = random.Random(seed)
    t_train = time.time()
    for step in range(args.steps):
        for group in optim.param_groups:
            group["lr"] = C.lr_at(step, args.steps, args.lr)
        idx = [rng.randrange(len(feats)) for _ in range(args.batch)]
        examples = []
        for i in idx:
            colour, shape = C.LABELS[int(labels[i])].split()
            task = rng.choice(TASKS)
            examples.append(make(question(task, rng), answer_text(task, colour, shape)))
        ids, mask, targets = batch_tensors(examples, pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(model, ids, mask, feats[idx].float(), image_id)
        loss = lm_loss(logits, targets)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optim.step()
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            log(
                f"step {step + 1}/{args.steps} loss {loss.item():.4f} "
                f"{(time.time() - t_train) / (step + 1):.3f} s/step {(time.time() - t0) / 60:.1f} min"
            )
    C.save(model, processor, args.out)
    log(f"trained in {(time.time() - t0) / 60:.1f} min; saved to {args.out}")
    mmcli_accuracy(args.out, args.check, args.check, log)
    log(f"done in {(time.time() - t0) / 60:.1f} min")
