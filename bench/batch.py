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
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classify as base  # bench/classify.py: the model and images are shared

MEMORY_TARGET_MB = 50.0


def run(
    mmcli: str, directory: Path, model: Path, summary: Path, out: Path, *extra: str, source: str | None = None
) -> dict[str, Any]:
    """One run; ``source``: another checkout's src/ (an earlier mmcli), run with this venv's packages."""
    env = base.child_env(2)
    program = [mmcli]
    if source is not None:
        env["PYTHONPATH"] = source
        program = [sys.executable, "-m", "mmcli"]
    cmd = [
        *program, "classify", str(directory), "--labels", ",".join(base.LABELS), "--model", str(model),
        "--no-cache", "--summary-json", str(summary), "--output", str(out), "--overwrite", *extra,
    ]  # fmt: skip
    result = base.run_timed(cmd, env)
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

    directory = out / "clip-small"
    if not (directory / "config.json").is_file():
        build_clip(directory)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--many", type=int, default=10000)
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="also run the prefetch case with an earlier mmcli's src/ (e.g. a git worktree), interleaved",
    )
    args = parser.parse_args()
    out = base.OUT
    out.mkdir(parents=True, exist_ok=True)
    mmcli = str(Path(sys.executable).parent / "mmcli")
    model = base.ensure_model(out)
    files = base.ensure_images(out, args.images)
    directory = out / f"images-{args.images}"
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
            base.wait_for_quiet(30)
            fig = run(mmcli, directory, model, summary, records, *extra, source=source)
            runs[name].append(fig)
            base.log(
                f"round {r + 1} {name}: {fig['images_per_s']:.2f} images/s, waited {fig['wait_share']:.1%}, "
                f"{fig['wall_s']:.1f} s"
            )

    tiny = small_model(out)
    memory = {}
    for count, tree in ((args.images, directory), (args.many, linked_tree(out, files, args.many))):
        base.wait_for_quiet(30)
        fig = run(mmcli, tree, tiny, summary, records)
        memory[count] = fig
        base.log(f"{count} inputs: peak RSS {fig['max_rss_mb']:.0f} MB, {fig['images_per_s']:.1f} images/s")

    med = statistics.median
    result = {
        name: {
            k: med(f[k] for f in figs) for k in ("images_per_s", "end_to_end_per_s", "wait_share", "wall_s")
        }
        for name, figs in runs.items()
    }
    mem_small, mem_big = memory[args.images]["max_rss_mb"], memory[args.many]["max_rss_mb"]
    report = {"throughput": result, "peak_rss_mb": {str(k): v["max_rss_mb"] for k, v in memory.items()}}
    (out / "batch.json").write_text(json.dumps(report, indent=2))
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
        verdict = "MET" if ratio >= 0.95 else "MISSED"
        print(
            f"  against the baseline ({args.baseline}): {ratio:.3f}x its images/s (target >= 0.95: {verdict})"
        )
    diff = mem_big - mem_small
    verdict = "MET" if abs(diff) <= MEMORY_TARGET_MB else "MISSED"
    print(
        f"  peak RSS (small CLIP): {args.images} inputs {mem_small:.0f} MB, {args.many} inputs {mem_big:.0f} MB: "
        f"{diff:+.0f} MB (target within {MEMORY_TARGET_MB:.0f} MB: {verdict})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
