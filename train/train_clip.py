"""Train models/shapes-clip: a 1.3 M-parameter CLIPModel that knows the 24 "<colour> <shape>" labels.

    .venv/bin/python train/train_clip.py              # the recorded run (see train/README.md)
    .venv/bin/python train/train_clip.py --smoke      # a few seconds: tiny pool, a handful of steps

Model: vision 64 px, patch 8, width 128, 4 layers, 2 heads; text width 128, 2 layers, 16 positions, a
hand-made CLIPTokenizer in which every word of the world is one token (train/common.py). The processor
squashes every image to 64×64 (no centre crop, which would cut the shape off non-square canvases); that
choice is saved in preprocessor_config.json.

Objective: each step, the text embeddings of all 24 labels under one prompt template drawn at random, and a
24-way cross-entropy of the image's logits against them (a batch full of duplicate captions makes the
in-batch contrastive loss a poor teacher), plus 0.3 × the same loss over the 6 colours ("a red shape") and
the 4 shapes ("a circle") alone, so that `--labels circle,square,...` works too. AdamW lr 1e-3, betas
(0.9, 0.98), weight decay 0.05, batch 128, 4 % warm-up then cosine, logit scale clamped to ≤ 100, bf16
autocast, 2 threads.

Data: a pool of 100 k augmented renderings (seeds 0..99 999; canvas size and aspect, position, rotation,
colour jitter, JPEG quality 25-95, brightness/contrast/saturation jitter; train/common.py) pre-rendered
by 2 processes into 64×64 uint8 arrays, then resampled with the 8 flips / transposes. Held-out check:
500 full-size renderings from seeds 2 000 000 000 on (every third one JPEG), through the saved processor,
with the alias's template "a photo of a {}.".

Deterministic: seeded torch / numpy / random; the same command gives the same weights on the same
machine and library versions (thread count and bf16 kernels may change the last bits elsewhere).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common as C
import numpy as np
import torch

TEMPLATES = [
    "a photo of a {}.",
    "a {}.",
    "{}",
    "a drawing of a {}.",
    "an image of a {}.",
    "a picture of a {}.",
    "a {} on a plain background.",
    "a rendering of a {}.",
    "this is a {}.",
    "a simple drawing of a single {}.",
]
ALIAS_TEMPLATE = TEMPLATES[0]
COLOUR_TEXTS = [f"{c} shape" for c in C.COLOURS]
SHAPE_TEXTS = list(C.SHAPES)
AUX_WEIGHT = 0.3


def build(tok: object) -> tuple[torch.nn.Module, object]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok),  # type: ignore[arg-type]
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": tok.bos_token_id,  # type: ignore[attr-defined]
            "eos_token_id": tok.eos_token_id,  # type: ignore[attr-defined]
            "pad_token_id": tok.pad_token_id,  # type: ignore[attr-defined]
        },
        vision_config={
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "image_size": C.IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=128,
    )
    model = CLIPModel(config)
    images = CLIPImageProcessor(size={"height": C.IMAGE_SIZE, "width": C.IMAGE_SIZE}, do_center_crop=False)
    return model, CLIPProcessor(image_processor=images, tokenizer=tok)


def text_batches(tok: object) -> list[dict[str, torch.Tensor]]:
    """For each template: the tokens of the 24 labels, then 6 colours, then 4 shapes."""
    out = []
    for template in TEMPLATES:
        texts = [template.format(t) for t in C.LABELS + COLOUR_TEXTS + SHAPE_TEXTS]
        enc = tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")  # type: ignore[operator]
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def evaluate(model: torch.nn.Module, tok: object, pixels: torch.Tensor, scenes: list) -> dict[str, float]:
    """Top-1 over the 24 labels with the alias's template, on processor-made pixels."""
    model.eval()
    with torch.inference_mode():
        texts = [ALIAS_TEMPLATE.format(label) for label in C.LABELS]
        enc = tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")  # type: ignore[operator]
        txt = torch.nn.functional.normalize(model.get_text_features(**enc).pooler_output, dim=-1)
        img = model.get_image_features(pixel_values=pixels).pooler_output
        pred = (torch.nn.functional.normalize(img, dim=-1) @ txt.T).argmax(-1).tolist()
    model.train()
    n = len(scenes)
    found = [C.LABELS[p].split() for p in pred]
    return {
        "top1": sum(f"{c} {s}" == scene.label for (c, s), scene in zip(found, scenes, strict=True)) / n,
        "colour": sum(c == scene.colour for (c, _), scene in zip(found, scenes, strict=True)) / n,
        "shape": sum(s == scene.shape for (_, s), scene in zip(found, scenes, strict=True)) / n,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4800)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-images", type=int, default=500)
    parser.add_argument("--out", default=str(C.MODELS / "shapes-clip"))
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--max-minutes", type=float, default=0, help="safety net: stop and save early")
    parser.add_argument("--smoke", action="store_true", help="tiny pool and a few steps (seconds)")
    parser.add_argument(
        "--init", help="start from this saved shapes-clip (a second stage) instead of scratch"
    )
    parser.add_argument("--stop-after", type=int, default=0, help="stop and save after this step")
    parser.add_argument("--seed", type=int, default=0, help="batch-sampling seed (use a new one per stage)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.pool, args.eval_every, args.eval_images = 20, 2000, 10, 50
    return args


def held_out(processor: Any, count: int) -> tuple[torch.Tensor, list[Any]]:
    """The eval images as the processor prepares them (checked equal to train/common.py's preprocessing)."""
    eval_images, eval_scenes = C.eval_set(count)
    eval_pixels = processor.image_processor(images=eval_images, return_tensors="pt")["pixel_values"]
    ours = torch.from_numpy(C.normalise(C.squash(eval_images[0])))
    assert torch.allclose(eval_pixels[0], ours, atol=1e-5), "train/common.py preprocessing != the processor's"
    return eval_pixels, eval_scenes


def optimiser(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices but the embeddings."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )


class Batches:
    """Training batches drawn from the rendered pool: normalised, each image under one of the eight
    dihedral transforms, with one of the text batches."""

    def __init__(
        self, pool: torch.Tensor, targets: torch.Tensor, texts: list[Any], size: int, seed: int
    ) -> None:
        self.pool, self.targets, self.texts, self.size = pool, targets, texts, size
        self.mean = torch.tensor(C.MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(C.STD).view(1, 3, 1, 1)
        self.gen = torch.Generator().manual_seed(1234 + seed)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, Any]:
        gen = self.gen
        idx = torch.randint(len(self.pool), (self.size,), generator=gen)
        x = (self.pool[idx].float() / 255.0 - self.mean) / self.std
        codes = torch.randint(8, (self.size,), generator=gen)
        for code in range(1, 8):
            sel = codes == code
            if sel.any():
                x[sel] = C.dihedral(x[sel], code)  # type: ignore[assignment]
        t_idx = int(torch.randint(len(self.texts), (1,), generator=gen))
        return x, self.targets[idx], self.texts[t_idx]


def losses(
    model: Any, x: torch.Tensor, y: torch.Tensor, text: Any, bf16: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 24-way label loss, and the auxiliary losses on the text batch's colour and shape prompts."""
    colour_of = torch.tensor([C.COLOURS.index(label.split()[0]) for label in C.LABELS])
    shape_of = torch.tensor([C.SHAPES.index(label.split()[1]) for label in C.LABELS])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        img = model.get_image_features(pixel_values=x).pooler_output
        txt = model.get_text_features(**text).pooler_output
    img = torch.nn.functional.normalize(img.float(), dim=-1)
    txt = torch.nn.functional.normalize(txt.float(), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    loss = torch.nn.functional.cross_entropy(logits[:, :24], y)
    aux = torch.nn.functional.cross_entropy(logits[:, 24:30], colour_of[y])
    aux = aux + torch.nn.functional.cross_entropy(logits[:, 30:], shape_of[y])
    return loss, aux


def main() -> None:
    args = parse_args()
    C.set_threads(args.threads)
    torch.manual_seed(0)
    C.quiet()
    t0 = time.time()
    tok = C.clip_tokenizer()
    model, processor = build(tok)
    if args.init:
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(args.init)
        print(f"starting from {args.init}", flush=True)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M", flush=True)
    pixels, labels = C.render_pool(0, args.pool, processes=2, salt=1)
    pool = torch.from_numpy(pixels)
    print(f"pool of {len(pool)} rendered in {time.time() - t0:.0f} s", flush=True)
    eval_pixels, eval_scenes = held_out(processor, args.eval_images)
    batches = Batches(
        pool, torch.from_numpy(labels.astype(np.int64)), text_batches(tok), args.batch, args.seed
    )
    optim = optimiser(model, args.lr)
    model.train()
    t_train = time.time()
    for step in range(args.steps):
        for group in optim.param_groups:
            group["lr"] = C.lr_at(step, args.steps, args.lr)
        loss, aux = losses(model, *batches.draw(), bf16=not args.no_bf16)
        optim.zero_grad(set_to_none=True)
        (loss + AUX_WEIGHT * aux).backward()
        optim.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=float(np.log(100.0)))
        done = step + 1
        if done % 50 == 0 or done == args.steps:
            rate = done * args.batch / (time.time() - t_train)
            print(
                f"step {done}/{args.steps} loss {loss.item():.4f} aux {aux.item():.4f} "
                f"scale {model.logit_scale.exp().item():.1f} {rate:.0f} img/s "
                f"{(time.time() - t0) / 60:.1f} min",
                flush=True,
            )
        stop = (args.max_minutes and (time.time() - t0) / 60 > args.max_minutes) or done == args.stop_after
        if done % args.eval_every == 0 or done == args.steps or stop:
            scores = evaluate(model, tok, eval_pixels, eval_scenes)
            print(f"eval step {done}: {scores} at {(time.time() - t0) / 60:.1f} min", flush=True)
            C.save(model, processor, args.out)
        if stop:
            print(f"stopped after step {done}", flush=True)
            break
    print(f"done in {(time.time() - t0) / 60:.1f} min; saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
