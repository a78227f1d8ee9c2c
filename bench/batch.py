"""Benchmark: a batch job on one machine. 1,000 JPEGs of 640x480 through classify with the random-weight
ViT-B/32, with prefetch (decoding in worker threads while the model computes) and without (--workers 0:
decode, then compute, in turn). Prints images/s and the share of the time the model waited for data.

Then peak memory (max RSS of the process) for 1,000 and for 10,000 inputs, with a small CLIP so the run is
about the pipeline, not the model (10,000 inputs are hard links to the 1,000 files; --no-cache, so every
one is decoded). Target: within 50 MB of each other.

Prints figures, never asserts; medians over --rounds interleaved rounds; the cache is off throughout.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/batch.py [--rounds 1] [--images 1000] [--many 10000]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import harness  # bench/harness.py: the model, the images, the timing

MEMORY_TARGET_MB = 50.0
BASELINE_TARGET = 0.95


def run(
    mmcli: str, directory: Path, model: Path, summary: Path, out: Path, *extra: str, source: str | None = None
) -> dict[str, Any]:
    """One run; ``source``: another checkout's src/ (an earlier mmcli), run with this venv's packages."""
    env = harness.child_env(2)
    program = [mmcli]
    if source is not None:
        env["PYTHONPATH"] = source
        program = list(harness.MMCLI)
    cmd = [
        *program, "classify", str(directory), "--labels", ",".join(harness.LABELS), "--model", str(model),
        "--no-cache", "--summary-json", str(summary), "--output", str(out), "--overwrite", *extra,
    ]  # fmt: skip
    result = harness.run_timed(cmd, env)
    if result["rc"] != 0:
        raise SystemExit(f"mmcli failed ({result['rc']}): {result['stderr']}")
    facts = json.loads(summary.read_text())
    waited = facts["data_wait_s"]
    return {
        "wall_s": result["wall_s"],
        "images_per_s": facts["items_per_s"],
        "end_to_end_per_s": facts["done"] / result["wall_s"],
        "wait_share": waited / max(1e-9, waited + facts["compute_s"]),
        "max_rss_mb": result["max_rss_mb"],
        "done": facts["done"],
    }


def linked_tree(out: Path, files: list[Path], count: int) -> Path:
    """``count`` names for the same ``len(files)`` images (hard links), in 100 subdirectories."""
    directory = out / f"links-{count}"
    if directory.is_dir() and sum(1 for _ in directory.rglob("*.jpg")) == count:
        return directory
    for i in range(count):
        sub = directory / f"d{i % 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        target = sub / f"img_{i:05d}.jpg"
        if not target.exists():
            os.link(files[i % len(files)], target)
    return directory


def small_model(out: Path) -> Path:
    from mmcli.testing.contrastive import build_clip

    return harness.ensure_built(out / "clip-small", build_clip)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--many", type=int, default=10000)
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="also run the prefetch case with an earlier mmcli's src/ (e.g. a git worktree), interleaved",
    )
    return parser.parse_args()


def throughput(
    args: argparse.Namespace, mmcli: str, model: Path, directory: Path
) -> dict[str, dict[str, Any]]:
    """Prefetch on and off (and the baseline's), interleaved over the rounds: each case's medians."""
    out = harness.OUT
    summary, records = out / "batch-summary.json", out / "batch-out.jsonl"
    cases: list[tuple[str, list[str], str | None]] = [
        ("prefetch", [], None),
        ("no prefetch", ["--workers", "0"], None),
    ]
    if args.baseline:
        cases.append(("baseline", [], str(Path(args.baseline).resolve())))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in cases}
    for r in range(args.rounds):
        for name, extra, source in cases:
            harness.wait_for_quiet(30)
            fig = run(mmcli, directory, model, summary, records, *extra, source=source)
            runs[name].append(fig)
            harness.log(
                f"round {r + 1} {name}: {fig['images_per_s']:.2f} images/s, waited {fig['wait_share']:.1%}, "
                f"{fig['wall_s']:.1f} s"
            )
    keys = ("images_per_s", "end_to_end_per_s", "wait_share", "wall_s")
    return {name: harness.medians(figs, keys) for name, figs in runs.items()}


def memory(
    args: argparse.Namespace, mmcli: str, files: list[Path], directory: Path
) -> dict[int, dict[str, Any]]:
    """A run of the small CLIP over --images inputs and over --many: each one's figures."""
    out = harness.OUT
    summary, records = out / "batch-summary.json", out / "batch-out.jsonl"
    tiny = small_model(out)
    figures = {}
    for count, tree in ((args.images, directory), (args.many, linked_tree(out, files, args.many))):
        harness.wait_for_quiet(30)
        fig = run(mmcli, tree, tiny, summary, records)
        figures[count] = fig
        harness.log(
            f"{count} inputs: peak RSS {fig['max_rss_mb']:.0f} MB, {fig['images_per_s']:.1f} images/s"
        )
    return figures


def main() -> int:
    args = parse_args()
    out = harness.OUT
    out.mkdir(parents=True, exist_ok=True)
    mmcli = harness.mmcli_script()
    model = harness.ensure_model(out)
    files = harness.ensure_images(out, args.images)
    directory = out / f"images-{args.images}"
    result = throughput(args, mmcli, model, directory)
    peaks = memory(args, mmcli, files, directory)
    report = {"throughput": result, "peak_rss_mb": {str(k): v["max_rss_mb"] for k, v in peaks.items()}}
    harness.save_json(out / "batch.json", report)
    show(args, result, peaks[args.images]["max_rss_mb"], peaks[args.many]["max_rss_mb"])
    return 0


def show(
    args: argparse.Namespace, result: dict[str, dict[str, Any]], mem_small: float, mem_big: float
) -> None:
    pre, nopre = result["prefetch"], result["no prefetch"]
    print(
        f"bench/batch.py: {args.images} JPEGs 640x480, random-weight ViT-B/32, fp32 CPU, batch 16, medians of {args.rounds}"
    )
    for name, fig in result.items():
        print(
            f"  {name:12s} {fig['images_per_s']:6.2f} images/s after load ({fig['end_to_end_per_s']:.2f} end to end); "
            f"model waited for data {fig['wait_share']:.1%} of the time"
        )
    print(f"  prefetch speed-up: {pre['images_per_s'] / nopre['images_per_s']:.2f}x")
    if "baseline" in result:
        ratio = pre["images_per_s"] / result["baseline"]["images_per_s"]
        verdict = harness.verdict(ratio, BASELINE_TARGET)
        print(
            f"  against the baseline ({args.baseline}): {ratio:.3f}x its images/s (target >= {BASELINE_TARGET}: {verdict})"
        )
    diff = mem_big - mem_small
    verdict = harness.verdict(abs(diff), MEMORY_TARGET_MB, at_least=False)
    print(
        f"  peak RSS (small CLIP): {args.images} inputs {mem_small:.0f} MB, {args.many} inputs {mem_big:.0f} MB: "
        f"{diff:+.0f} MB (target within {MEMORY_TARGET_MB:.0f} MB: {verdict})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
