"""Benchmark: the embedding cache. Classify 256 images with the random-weight ViT-B/32, then classify them
again with new labels: the second run reads every image embedding from the cache.

Prints figures, never asserts. Each round starts from an empty cache; medians over --rounds rounds.
Two ratios are printed: end to end (process start to exit, as a user times it) and the work phase (after
the model loaded: hashing, lookups, text encoding, scoring), since both runs pay the same start-up
(interpreter, import torch + transformers, model load) that no cache can remove.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cache.py [--rounds 3] [--images 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import harness  # bench/harness.py: the model, the images, the timing

FIRST = ["cat", "dog", "bird", "car", "tree", "house", "boat", "flower", "horse", "airplane"]
SECOND = ["apple", "chair", "river", "mountain", "train", "bicycle", "lamp", "clock", "shoe", "guitar"]
TARGET = 50.0


def run(
    mmcli: str, directory: Path, model: Path, labels: list[str], cache: Path, summary: Path
) -> dict[str, Any]:
    cmd = [
        mmcli, "classify", str(directory), "--labels", ",".join(labels), "--model", str(model),
        "--cache-dir", str(cache), "--summary-json", str(summary), "--format", "jsonl",
    ]  # fmt: skip
    result = harness.run_timed(cmd, harness.child_env(2))
    if result["rc"] != 0:
        raise SystemExit(f"mmcli failed ({result['rc']}): {result['stderr']}")
    facts = json.loads(summary.read_text())
    return {
        "wall_s": result["wall_s"],
        "work_s": facts["wall_s"] - facts["load_s"],
        "load_s": facts["load_s"],
        "hits": facts["cache_hits"],
        "misses": facts["cache_misses"],
        "records": len(result["lines"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    out = harness.OUT
    out.mkdir(parents=True, exist_ok=True)
    model = harness.ensure_model(out)
    harness.ensure_images(out, args.images)
    directory = out / f"images-{args.images}"
    mmcli = harness.mmcli_script()
    cache, summary = out / "cache-bench", out / "cache-summary.json"
    rounds = []
    for r in range(args.rounds):
        harness.wait_for_quiet(30)
        shutil.rmtree(cache, ignore_errors=True)
        first = run(mmcli, directory, model, FIRST, cache, summary)
        second = run(mmcli, directory, model, SECOND, cache, summary)
        rounds.append((first, second))
        harness.log(
            f"round {r + 1}: first {first['wall_s']:.2f} s (work {first['work_s']:.2f} s, {first['misses']} misses), "
            f"second {second['wall_s']:.2f} s (work {second['work_s']:.3f} s, {second['hits']} hits)"
        )
    fig = figures(args, [f for f, _ in rounds], [s for _, s in rounds])
    harness.save_json(out / "cache.json", fig)
    show(fig)
    return 0


def figures(
    args: argparse.Namespace, firsts: list[dict[str, Any]], seconds: list[dict[str, Any]]
) -> dict[str, Any]:
    keys = ("wall_s", "work_s")
    first, second = harness.medians(firsts, keys), harness.medians(seconds, keys)
    return {
        "images": args.images,
        "rounds": args.rounds,
        "first_wall_s": first["wall_s"],
        "second_wall_s": second["wall_s"],
        "ratio_end_to_end": first["wall_s"] / second["wall_s"],
        "first_work_s": first["work_s"],
        "second_work_s": second["work_s"],
        "ratio_work": first["work_s"] / second["work_s"],
        "second_start_and_load_s": harness.median_of(seconds, "load_s"),
        "second_hits": seconds[-1]["hits"],
    }


def show(fig: dict[str, Any]) -> None:
    images = fig["images"]
    print(
        f"bench/cache.py: {images} images, random-weight ViT-B/32, fp32 CPU, medians of {fig['rounds']} rounds"
    )
    for title, key in (("first run (empty cache):  ", "first"), ("second run (new labels):  ", "second")):
        print(
            f"  {title} {fig[key + '_wall_s']:7.2f} s end to end, {fig[key + '_work_s']:7.3f} s after the model loaded"
        )
    print(
        f"    of which start-up + model load {fig['second_start_and_load_s']:.2f} s; {fig['second_hits']} of {images} from the cache"
    )
    for title, key in (("speed-up end to end:", "ratio_end_to_end"), ("speed-up of the work:", "ratio_work")):
        print(f"  {title} {fig[key]:6.1f}x  (target {TARGET:.0f}x: {harness.verdict(fig[key], TARGET)})")


if __name__ == "__main__":
    raise SystemExit(main())
