"""Benchmark: batched captioning with mmcli against transformers' pipeline, one image at a time.

Prints figures and ratios; asserts nothing. Both sides use the same locally built checkpoint (random
weights, scaled-down LLaVA and BLIP-2: hidden 512, 4 layers, 224 px images, patch 14), the same prompt and
greedy decoding of exactly N new tokens (the test models never emit an end-of-sequence token, so every
caption has the same length on both sides).

    python bench/caption.py                 # 64 images, 20 new tokens, batch 8, CPU fp32
    python bench/caption.py --quick         # a smoke run
    python bench/caption.py --device cuda --dtype fp16

mmcli runs as users run it (a subprocess of the real CLI); its steady rate is read from the times at which
its records arrive, so process start and model load are reported apart. The pipeline runs in its own
subprocess too, so that each side's peak memory (ru_maxrss of that process) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness  # bench/harness.py: the builds, the timing
from harness import MMCLI, OUT

TARGET = 3.0

PIPELINE_RUNNER = r"""
import json, sys, time, resource
import torch
from PIL import Image
from transformers import pipeline
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec["dtype"]]
pipe = pipeline("image-text-to-text", model=spec["model"], device=spec["device"], dtype=dtype)
def run(path):
    # a fresh dict each call: the pipeline writes max_new_tokens into the generate_kwargs it is given
    kwargs = {"generate_kwargs": {"do_sample": False}, "max_new_tokens": spec["tokens"], "return_full_text": False}
    img = Image.open(path).convert("RGB")
    if spec["chat"]:
        chat = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": spec["prompt"]}]}]
        return pipe(text=chat, **kwargs)[0]["generated_text"]
    return pipe(images=img, text=spec["prompt"], **kwargs)[0]["generated_text"]

run(spec["paths"][0])  # warm-up
start = time.perf_counter()
out = [run(p).strip() for p in spec["paths"]]
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "captions": out,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_models(quick: bool) -> dict[str, Path]:
    from mmcli.testing.generative import build_blip2, build_llava

    size = {"hidden": 512, "image_size": 224, "patch": 14, "layers": 4, "heads": 8}
    if quick:
        size = {"hidden": 64, "image_size": 56, "patch": 14, "layers": 2, "heads": 4}
    tag = "quick" if quick else "512"
    return {
        "llava": harness.ensure_built(OUT / f"caption-llava-{tag}", lambda path: build_llava(path, **size)),
        "blip2": harness.ensure_built(
            OUT / f"caption-blip2-{tag}",
            lambda path: build_blip2(path, language="opt", query_tokens=32, **size),
        ),
    }


def make_images(count: int) -> list[str]:
    import numpy as np
    from PIL import Image, ImageDraw

    folder = OUT / f"caption-images-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        if not path.exists():
            img = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(img)
            x, y = rng.integers(0, 400), rng.integers(0, 300)
            draw.ellipse((x, y, x + 200, y + 150), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            img.save(path, quality=90)
        paths.append(str(path))
    return paths


def run_mmcli(model: Path, paths: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The real CLI in a subprocess; record arrival times give the steady rate after the first batch."""
    cmd = [
        *MMCLI,
        "caption",
        "-",
        "--model",
        str(model),
        "--batch-size",
        str(args.batch_size),
        "--max-new-tokens",
        str(args.tokens),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--format",
        "jsonl",
        "--quiet",
    ]
    env = harness.offline_env(OMP_NUM_THREADS=str(args.threads))
    stdin = "".join(p + "\n" for p in paths).encode()
    run = harness.run_timed(cmd, env, stamp_lines=True, stdin=stdin, capture_stderr=False)
    arrivals = run["stamps"]
    captions = [json.loads(line)["caption"] for line in run["lines"]]
    first_batch = arrivals[args.batch_size - 1] if len(arrivals) >= args.batch_size else arrivals[-1]
    steady = (
        (len(arrivals) - args.batch_size) / (arrivals[-1] - first_batch)
        if len(arrivals) > args.batch_size
        else float("nan")
    )
    return {
        "status": run["rc"],
        "seconds_total": run["wall_s"],
        "first_record_s": arrivals[0],
        "images_per_s_end_to_end": len(arrivals) / run["wall_s"],
        "images_per_s_steady": steady,
        "peak_rss_mb": run["max_rss_mb"],
        "captions": captions,
    }


def run_pipeline(
    model: Path, paths: list[str], prompt: str, chat: bool, args: argparse.Namespace
) -> dict[str, Any]:
    spec = {
        "model": str(model),
        "paths": paths,
        "prompt": prompt,
        "chat": chat,
        "tokens": args.tokens,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
    }
    proc = subprocess.run(
        [sys.executable, "-c", PIPELINE_RUNNER, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=harness.offline_env(),
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["images_per_s"] = len(paths) / result["seconds"]
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--quick", action="store_true", help="tiny models and 16 images: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.images = min(args.images, 16)
    return args


def compare(family: str, model: Path, paths: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """mmcli against the pipeline on one model: prints the table's row, returns the figures."""
    from mmcli.modeling import registry

    settings = registry.family_entry(family)
    caption_prompt = settings.get("caption_prompt", "")
    chat = bool(settings.get("chat"))
    mine = run_mmcli(model, paths, args)
    theirs = run_pipeline(model, paths, caption_prompt, chat, args)
    ratio = mine["images_per_s_steady"] / theirs["images_per_s"]
    same = sum(a == b for a, b in zip(mine["captions"], theirs["captions"], strict=False))
    print(
        f"{family:8} {mine['images_per_s_steady']:11.2f}/s {mine['images_per_s_end_to_end']:10.2f}/s "
        f"{theirs['images_per_s']:10.2f}/s {ratio:6.2f}x {TARGET:5.1f}x {mine['peak_rss_mb']:8.0f} MB "
        f"{theirs['peak_rss_mb']:7.0f} MB {same:4d}/{len(paths)}  {harness.verdict(ratio, TARGET)}"
    )
    return {
        "mmcli": {k: v for k, v in mine.items() if k != "captions"},
        "pipeline": {k: v for k, v in theirs.items() if k != "captions"},
        "ratio_steady": ratio,
        "identical_captions": same,
        "target": TARGET,
    }


def main() -> None:
    args = parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    models = build_models(args.quick)
    paths = make_images(args.images)
    print(
        f"mmcli caption vs transformers pipeline('image-text-to-text'), {len(paths)} images 640x480, "
        f"{args.tokens} new tokens, greedy, {args.device} {args.dtype}, {args.threads} threads"
    )
    print(
        f"{'model':8} {'mmcli b=' + str(args.batch_size):>14} {'(end to end)':>13} {'pipeline b=1':>13} "
        f"{'ratio':>7} {'target':>7} {'mmcli peak':>11} {'pipe peak':>10} {'same text':>10}"
    )
    report: dict[str, Any] = {"config": vars(args), "models": {}}
    for family, model in models.items():
        report["models"][family] = compare(family, model, paths, args)
    harness.save_json(OUT / "caption.json", report)
    print(f"(steady rate: records after the first batch; figures also in {OUT / 'caption.json'})")


if __name__ == "__main__":
    main()
