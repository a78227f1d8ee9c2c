"""Benchmark: the feed rate — images/s read, decoded (in the isolated decoder processes) and preprocessed
(by the checkpoint's own processor, in the loader threads) with no model forward, as a run feeds its model.

640x480 JPEGs (bench/classify.py's set), the random-weight ViT-B/32's processor, batch 16, cache off. For each
worker count (1 and 2 here; 1, 2, 4, 8, 16 where there are 16 cores or more) it prints images/s, the speed-up
over one worker and the scaling efficiency (speed-up / workers). Target: >= 0.8 x linear up to 8 workers.

Prints figures, never asserts; medians over --rounds interleaved rounds.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/feed.py [--images 400] [--rounds 3] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import harness  # bench/harness.py: the model, the images, the timing

TARGET_EFFICIENCY = 0.8
TARGET_AT = 8


def default_workers() -> list[int]:
    cores = os.cpu_count() or 1
    return [n for n in (1, 2, 4, 8, 16) if n <= max(2, cores)]


def feed_rate(model: Path, files: list[Path], workers: int) -> float:
    """Images/s through the loader alone (read, isolated decode, preprocess, batch), decoders started."""
    from mmcli.commands.classify import ContrastiveClassify
    from mmcli.run.options import CommonOptions
    from mmcli.run.pipeline import Job
    from mmcli.run.task import Outcome
    from mmcli.sources.inputs import Item

    options = CommonOptions(model=str(model), workers=workers, no_cache=True, quiet=True, batch_size=16)
    task = ContrastiveClassify(["cat", "dog"], None, None, None, multi_label=False, threshold=0.5)
    job = Job(task, options)
    job.load()
    try:
        warm = [Outcome(Item(str(f))) for f in files[: 2 * workers]]
        for _ in job.loaded(warm):  # every decoder process has started and answered once
            pass
        start = time.perf_counter()
        count = sum(len(batch) for batch in job.loaded(Outcome(Item(str(f))) for f in files))
        return count / (time.perf_counter() - start)
    finally:
        job.decoders.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default=",".join(map(str, default_workers())))
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    harness.OUT.mkdir(parents=True, exist_ok=True)
    model = harness.ensure_model(harness.OUT)
    files = harness.ensure_images(harness.OUT, args.images)
    import torch

    torch.set_num_threads(1)  # no model runs; the processors are numpy and Pillow
    rates: dict[int, list[float]] = {n: [] for n in counts}
    for r in range(args.rounds):
        for n in counts:
            harness.wait_for_quiet(20)
            rates[n].append(feed_rate(model, files, n))
            harness.log(f"round {r + 1}, {n} workers: {rates[n][-1]:.1f} images/s")
    med = {n: harness.median(v) for n, v in rates.items()}
    one = med[counts[0]] / counts[0]
    print(
        f"bench/feed.py: {len(files)} JPEGs 640x480, ViT-B/32 processor, decode + preprocess, no model; "
        f"{os.cpu_count()} CPUs; medians of {args.rounds}"
    )
    for n in counts:
        efficiency = med[n] / (one * n)
        print(
            f"  {n:2d} workers: {med[n]:7.1f} images/s  speed-up {med[n] / one:5.2f}x  efficiency {efficiency:.2f}"
        )
    if TARGET_AT in med:
        eff = med[TARGET_AT] / (one * TARGET_AT)
        verdict = harness.verdict(eff, TARGET_EFFICIENCY)
        print(
            f"  scaling at {TARGET_AT} workers: {eff:.2f} x linear (target >= {TARGET_EFFICIENCY}: {verdict})"
        )
    else:
        print(f"  scaling at {TARGET_AT} workers: not measured ({os.cpu_count()} CPUs here)")
    harness.save_json(harness.OUT / "feed.json", {str(n): v for n, v in rates.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
