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
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classify as base  # bench/classify.py: the model and images are shared

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
    result = base.run_timed(cmd, base.child_env(2))
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
    out = base.OUT
    out.mkdir(parents=True, exist_ok=True)
    model = base.ensure_model(out)
    base.ensure_images(out, args.images)
    directory = out / f"images-{args.images}"
    mmcli = str(Path(sys.executable).parent / "mmcli")
    cache, summary = out / "cache-bench", out / "cache-summary.json"
    rounds = []
    for r in range(args.rounds):
        base.wait_for_quiet(30)
        shutil.rmtree(cache, ignore_errors=True)
        first = run(mmcli, directory, model, FIRST, cache, summary)
        second = run(mmcli, directory, model, SECOND, cache, summary)
        rounds.append((first, second))
        base.log(
            f"round {r + 1}: first {first['wall_s']:.2f} s (work {first['work_s']:.2f} s, {first['misses']} misses), "
            f"second {second['wall_s']:.2f} s (work {second['work_s']:.3f} s, {second['hits']} hits)"
        )
    med = statistics.median
    first_wall, second_wall = med(f["wall_s"] for f, _ in rounds), med(s["wall_s"] for _, s in rounds)
    first_work, second_work = med(f["work_s"] for f, _ in rounds), med(s["work_s"] for _, s in rounds)
    load = med(s["load_s"] for _, s in rounds)
    fig = {
        "images": args.images,
        "rounds": args.rounds,
        "first_wall_s": first_wall,
        "second_wall_s": second_wall,
        "ratio_end_to_end": first_wall / second_wall,
        "first_work_s": first_work,
        "second_work_s": second_work,
        "ratio_work": first_work / second_work,
        "second_start_and_load_s": load,
        "second_hits": rounds[-1][1]["hits"],
    }
    (out / "cache.json").write_text(json.dumps(fig, indent=2))
    verdict = lambda v: "MET" if v >= TARGET else "MISSED"  # noqa: E731
    print(
        f"bench/cache.py: {args.images} images, random-weight ViT-B/32, fp32 CPU, medians of {args.rounds} rounds"
    )
    print(
        f"  first run (empty cache):   {first_wall:7.2f} s end to end, {first_work:7.3f} s after the model loaded"
    )
    print(
        f"  second run (new labels):   {second_wall:7.2f} s end to end, {second_work:7.3f} s after the model loaded"
    )
    print(
        f"    of which start-up + model load {load:.2f} s; {fig['second_hits']} of {args.images} from the cache"
    )
    print(
        f"  speed-up end to end: {fig['ratio_end_to_end']:6.1f}x  (target {TARGET:.0f}x: {verdict(fig['ratio_end_to_end'])})"
    )
    print(
        f"  speed-up of the work: {fig['ratio_work']:6.1f}x  (target {TARGET:.0f}x: {verdict(fig['ratio_work'])})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
