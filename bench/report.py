"""Benchmark: --report FILE.html at 10,000 images — the page's size, its load time in headless Chromium, and
what the report costs a classify run.

Prints figures, never asserts. Built offline into bench/out/report/ and reused: ``--distinct`` photo-like
images (shapes scenes with sensor-like noise, JPEG, so thumbnails weigh what a photo's do), hard-linked
under ``--n`` names (the runs use --no-cache, so every name is read, decoded and scored).

  (a) ``mmcli classify DIR -f jsonl --no-cache`` alone, end to end;
  (b) the same run with its records fed, as they arrive, to a ReportWriter in this process (the wiring
      the commands use), until the page is written: the report's cost is (b) - (a), and its tail (what
      ``close`` waited for once the run had ended);
  (d) the report alone over (a)'s records, no run beside it (thumbnails decoded in decoder processes), and
      ``thumbnail_jpeg()`` of pixels already decoded (what a run that hands over its own decoded pixels
      would pay);
  (c) the page: bytes, bytes per thumbnail; Chromium's time to the first rendered page of the gallery
      (``performance.now()`` when report.js has drawn it, navigation start = 0) and the wall time of a
      headless ``--dump-dom``, for page 1 and page 50.

    HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 .venv/bin/python bench/report.py [--n 10000]

Figures also go to bench/out/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import harness  # bench/harness.py: the timing, the medians
from harness import MMCLI, OUT, ROOT

harness.src_first()

from mmcli.sinks.report import ReportWriter, thumbnail_jpeg  # noqa: E402
from mmcli.testing import shapes  # noqa: E402


def images(n: int, distinct: int) -> Path:
    folder = OUT / "report" / f"images-{n}-{distinct}"
    if folder.exists() and len(os.listdir(folder)) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sources = []
    for i in range(distinct):
        scene = shapes.scene(7_000_000 + i)
        pixels = np.asarray(scene.render((640, 480))).astype(np.int16)
        pixels += rng.normal(0, 6, pixels.shape).astype(np.int16)
        path = folder / f"img-{i:05}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        sources.append(path)
    for i in range(distinct, n):
        os.link(sources[i % distinct], folder / f"img-{i:05}.jpg")
    return folder


def command(folder: Path) -> list[str]:
    labels = ROOT / "samples" / "shapes-labels.txt"
    model = ["--model", "shapes-clip", "--labels-file", str(labels)]
    return [*MMCLI, "classify", str(folder), *model, "-f", "jsonl", "--no-cache", "-q"]


def cpu() -> float:
    """CPU seconds of this process and of its children that ended (mmcli, the report's decoders)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def plain_run(folder: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    start, used = time.perf_counter(), cpu()
    proc = subprocess.run(command(folder), capture_output=True, check=True)
    figures = {"wall_s": time.perf_counter() - start, "cpu_s": cpu() - used}
    return figures, [json.loads(line) for line in proc.stdout.splitlines()]


def run_with_report(folder: Path, page: Path, threads: int) -> dict[str, float]:
    start, used = time.perf_counter(), cpu()
    report = ReportWriter(str(page), "classify", title="bench", threads=threads, overwrite=True)
    proc = subprocess.Popen(command(folder), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    for line in proc.stdout:
        report.add(json.loads(line))
    proc.wait()
    ended = time.perf_counter()
    report.close()
    done = time.perf_counter()
    return {"wall_s": done - start, "run_s": ended - start, "tail_s": done - ended, "cpu_s": cpu() - used}


def report_alone(records: list[dict[str, Any]], page: Path, threads: int) -> float:
    def write() -> None:
        with ReportWriter(str(page), "classify", threads=threads, overwrite=True) as report:
            for record in records:
                report.add(record)

    return float(harness.timed(write)[0])


def from_pixels(folder: Path, count: int = 200) -> float:
    decoded = [Image.open(path).convert("RGB") for path in sorted(folder.iterdir())[:count]]
    seconds, _ = harness.timed(lambda: [thumbnail_jpeg(image) for image in decoded])
    return 1000 * seconds / len(decoded)


def chromium(page: Path, fragment: str) -> dict[str, float]:
    browser = shutil.which("chromium") or shutil.which("google-chrome")
    if browser is None:
        return {}
    with tempfile.TemporaryDirectory() as profile:
        start = time.perf_counter()
        proc = subprocess.run(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--window-size=1200,900", "--dump-dom", page.as_uri() + fragment],
            capture_output=True, check=True, timeout=300,
        )  # fmt: skip
        wall = time.perf_counter() - start
    rendered = re.search(rb'data-render-ms="(\d+)"', proc.stdout)
    cards = proc.stdout.count(b'class="card"')
    return {"render_ms": float(rendered.group(1)) if rendered else -1, "wall_s": wall, "cards": cards}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--distinct", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="(a) and (b) alternated; medians quoted")
    args = parser.parse_args()
    os.environ.setdefault("MMCLI_CACHE_DIR", tempfile.mkdtemp(prefix="mmcli-bench-cache-"))

    folder = images(args.n, args.distinct)
    page = OUT / "report" / "report.html"
    plains, reported = [], []
    for _ in range(args.rounds):
        plain, records = plain_run(folder)
        plains.append(plain)
        reported.append(run_with_report(folder, page, args.threads))
    show_cost(args, harness.medians(plains), harness.medians(reported))
    alone = report_alone(records, OUT / "report" / "alone.html", args.threads)
    ready = from_pixels(folder)
    print(
        f"(d) the report alone: {alone:.1f} s ({1000 * alone / len(records):.1f} ms/image wall, "
        f"{args.threads} threads); thumbnail_jpeg() of decoded pixels: {ready:.1f} ms/image"
    )
    size = page.stat().st_size
    print(
        f"(c) page: {size / 1e6:.1f} MB for {len(records)} records ({size / len(records) / 1e3:.1f} kB each)"
    )
    figures: dict[str, Any] = {"n": args.n, "plain": plains, "with_report": reported, "page_bytes": size}
    figures |= {"alone_s": alone, "jpeg_ms": ready}
    for fragment in ("", "#page=50"):
        seen = chromium(page, fragment)
        figures[f"chromium{fragment or '#page=1'}"] = seen
        if seen:
            print(
                f"    Chromium {fragment or '#page=1'}: first gallery page drawn at "
                f"{seen['render_ms']:.0f} ms, "
                f"headless --dump-dom {seen['wall_s']:.1f} s, {seen['cards']} cards"
            )
    harness.save_json(OUT / "report.json", figures)


def show_cost(args: argparse.Namespace, plain: dict[str, float], timed: dict[str, float]) -> None:
    """(a) and (b): the run alone and with the report, medians."""
    plain_s, cost, extra = plain["wall_s"], timed["wall_s"] - plain["wall_s"], timed["cpu_s"] - plain["cpu_s"]
    print(
        f"(a) classify alone: {args.n} images in {plain_s:.1f} s ({args.n / plain_s:.0f} images/s), "
        f"{plain['cpu_s']:.1f} CPU s"
    )
    print(
        f"(b) with --report: {timed['wall_s']:.1f} s ({cost:+.1f} s, {100 * cost / plain_s:+.0f} %), "
        f"{timed['cpu_s']:.1f} CPU s ({extra:+.1f}, {100 * extra / plain['cpu_s']:+.0f} %, "
        f"{1000 * extra / args.n:.1f} ms/image); close() waited {timed['tail_s']:.1f} s after the run"
    )
    print(
        f"    os.getloadavg() now: {os.getloadavg()[0]:.1f} (the machine is shared: wall times move with it)"
    )


if __name__ == "__main__":
    main()
