"""Benchmark: ``mmcli classify`` with the local engine against ``--engine ray`` (a local Ray started by the
command itself), on this machine. Prints figures, never asserts.

The same command for both, each in a subprocess, end to end (Ray's start-up included, as a user sees it):
2,000 deterministic 640x480 JPEGs (bench/classify.py's), 10 labels, a random-weight CLIP small enough that a
run takes a minute or two on 2 CPUs (ViT at 224 px, patch 32, width 512, 8 layers). Outputs go to
bench/out/ray/ (git-ignored); the figures to bench/out/ray.json.

    HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 .venv/bin/python bench/ray.py [--images 2000] [--actors 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import harness  # bench/harness.py: the images, the labels, the timing
from harness import LABELS, OUT, log

MODEL = {"hidden": 512, "layers": 8, "heads": 8, "image_size": 224, "patch": 32, "projection": 256}


def ensure_model(out: Path) -> Path:
    from mmcli.testing.contrastive import build_clip

    words = harness.prompt_words()
    return harness.ensure_built(
        out / "clip-s32",
        lambda path: build_clip(path, seed=0, words=words, **MODEL),
        {"builder": "mmcli.testing.contrastive.build_clip", **MODEL, "words": words},
        "the random-weight CLIP (offline)",
    )


def run(engine: str, images: Path, model: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    output = out / f"{engine}.jsonl"
    summary = out / f"{engine}.summary.json"
    output.unlink(missing_ok=True)
    cmd = [*harness.MMCLI, "classify", str(images), "--model", str(model)]
    cmd += ["--labels", ",".join(LABELS), "--output", str(output), "--overwrite", "--no-cache"]
    cmd += ["--summary-json", str(summary), "--engine", engine, *extra]
    log(" ".join(cmd[2:]))
    env = harness.offline_env()
    wall, proc = harness.timed(lambda: subprocess.run(cmd, capture_output=True, text=True, env=env))
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed ({proc.returncode}):\n{proc.stderr}")
    figures = json.loads(summary.read_text())
    records = sum(1 for _ in output.open())
    return {"wall_s": round(wall, 2), "images_per_s": round(records / wall, 2), "records": records} | {
        k: figures.get(k) for k in ("done", "failed", "items_per_s", "load_s")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args()
    out = OUT / "ray"
    out.mkdir(parents=True, exist_ok=True)
    model = ensure_model(OUT)
    paths = harness.ensure_images(OUT, args.images)
    images = paths[0].parent
    local = run("local", images, model, out, [])
    ray = run("ray", images, model, out, ["--actors", str(args.actors)])
    result = {
        "images": args.images,
        "cpus": os.cpu_count(),
        "model": MODEL,
        "local": local,
        "ray": ray,
        "overhead_ratio": round(local["images_per_s"] / ray["images_per_s"], 3),
    }
    harness.save_json(OUT / "ray.json", result)
    print(f"{args.images} images 640x480, {len(LABELS)} labels, CLIP {MODEL}, {os.cpu_count()} CPUs")
    for name, fig in (("local", local), ("ray", ray)):
        print(
            f"  {name:5} {fig['images_per_s']:7.2f} images/s end to end ({fig['wall_s']} s), "
            f"{fig['items_per_s']} images/s after start-up ({fig['load_s']} s start-up)"
        )
    print(f"  overhead: local / ray = {result['overhead_ratio']}x (end to end)")


if __name__ == "__main__":
    main()
