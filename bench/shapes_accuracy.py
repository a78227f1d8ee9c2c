"""Accuracy of the bundled shapes models, measured through the CLI on freshly rendered held-out images.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/shapes_accuracy.py            # 600 images (--n), all checks
    HF_HUB_OFFLINE=1 .venv/bin/python bench/shapes_accuracy.py --quick    # 120 images

Renders ``--n`` scenes with ``mmcli.testing.shapes.scene(seed)`` for seeds from 3 000 000 000 (the training
scripts use seeds below 2 000 000 000, their own checks 2 000 000 000 on), every third one saved as a
JPEG (quality 40-95), the rest as PNG, into bench/out/shapes/. Then runs ``.venv/bin/mmcli`` in
subprocesses, ``-f jsonl``, and compares each record with the scene's ground truth:

  classify   shapes-clip over the 24 "<colour> <shape>" labels: top-1                 target >= 97 %
  caption    shapes-blip2 and shapes-llava: the caption names the colour and the shape  target >= 92 %
  vqa        "What color is the shape?" -> the colour                                   target >= 97 %
             "What shape is it?" -> the shape                                           target >= 92 %
  gen-classify  shapes-llava classify over the 24 labels (label likelihood): top-1     target >= 85 %
             (and shapes-blip2's, for reference)

Each figure is broken down by shape, colour, shape size (the circumscribed circle as a share of the
shorter side), aspect ratio and file format. Prints figures, never asserts; also writes
bench/out/shapes_accuracy.json (or --json PATH).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness  # bench/harness.py: the options, the timing, the tables
from harness import OUT, ROOT, row

harness.src_first()

from mmcli.testing import shapes  # noqa: E402

SEED0 = 3_000_000_000
COLOUR_Q = "What color is the shape?"
SHAPE_Q = "What shape is it?"
TARGETS = {
    "classify shapes-clip": 0.97,
    "caption shapes-blip2": 0.92,
    "caption shapes-llava": 0.92,
    "vqa colour shapes-blip2": 0.97,
    "vqa colour shapes-llava": 0.97,
    "vqa shape shapes-blip2": 0.92,
    "vqa shape shapes-llava": 0.92,
    "gen-classify shapes-llava": 0.85,
}
Truth = dict[str, tuple[shapes.Scene, str]]  # file name -> (scene, format)
Correct = Callable[[dict[str, Any], shapes.Scene], bool]  # whether a record is right about a scene


def size_bucket(s: shapes.Scene) -> str:
    return "25-40%" if s.size < 0.4 else "40-60%" if s.size < 0.6 else "60-80%"


def aspect_bucket(s: shapes.Scene) -> str:
    a = s.aspect
    if abs(a - 1) < 1e-9:
        return "1:1"
    if a > 1:
        return "landscape <1.5" if a < 1.5 else "landscape >=1.5"
    return "portrait <1.5" if 1 / a < 1.5 else "portrait >=1.5"


BREAKDOWNS: dict[str, Callable[[shapes.Scene, str], str]] = {
    "shape": lambda s, f: s.shape,
    "colour": lambda s, f: s.colour,
    "size": lambda s, f: size_bucket(s),
    "aspect": lambda s, f: aspect_bucket(s),
    "format": lambda s, f: f,
}


def render(n: int, directory: Path) -> Truth:
    """``n`` held-out images; returns file name -> (scene, format)."""
    harness.fresh_dir(directory)
    truth = {}
    for i in range(n):
        scene = shapes.scene(SEED0 + i)
        image = scene.render()
        if i % 3 == 2:
            name = f"{i:05d}.jpg"
            image.save(directory / name, quality=40 + (i * 11) % 56)
            truth[name] = (scene, "jpeg")
        else:
            name = f"{i:05d}.png"
            image.save(directory / name)
            truth[name] = (scene, "png")
    return truth


def mmcli(*args: str) -> tuple[list[dict[str, Any]], float]:
    """Run ``mmcli ARGS -f jsonl -q``; its records and wall time."""
    exe = ROOT / ".venv" / "bin" / "mmcli"
    command = [str(exe) if exe.exists() else "mmcli", *args, "-f", "jsonl", "-q"]
    env = harness.offline_env()
    took, proc = harness.timed(
        lambda: subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    )
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()], took


def score(records: list[dict[str, Any]], truth: Truth, correct: Correct) -> dict[str, Any]:
    """Overall and per-breakdown accuracy; a missing or failed record counts as wrong."""
    by_name = {Path(r["input"]).name: r for r in records}
    hits: dict[str, dict[str, list[int]]] = {k: defaultdict(lambda: [0, 0]) for k in BREAKDOWNS}
    total = ok = 0
    wrong: list[str] = []
    for name, (scene, fmt) in truth.items():
        record = by_name.get(name)
        good = record is not None and "error" not in record and correct(record, scene)
        total += 1
        ok += good
        if not good and len(wrong) < 8:
            wrong.append(
                f"{name} {scene.label} ({scene.width}x{scene.height}, size {scene.size:.2f}): {_shown(record)}"
            )
        for key, bucket in BREAKDOWNS.items():
            cell = hits[key][bucket(scene, fmt)]
            cell[0] += good
            cell[1] += 1
    return {
        "accuracy": ok / total,
        "n": total,
        "by": {k: {b: v[0] / v[1] for b, v in sorted(cells.items())} for k, cells in hits.items()},
        "counts": {k: {b: v[1] for b, v in sorted(cells.items())} for k, cells in hits.items()},
        "wrong_examples": wrong,
    }


def _shown(record: dict[str, Any] | None) -> str:
    if record is None:
        return "no record"
    for key in ("label", "caption", "answer", "error"):
        if key in record:
            return f"{key}={record[key]!r}"
    return repr(record)


def words(text: str) -> list[str]:
    return text.lower().replace(".", " ").replace(",", " ").split()


def main() -> None:
    args = harness.held_out_args(
        __doc__, 600, 120, "held-out images (default 600)", "120 images", "shapes_accuracy.json"
    )
    n = args.n
    directory = OUT / "shapes"
    t0 = time.time()
    truth = render(n, directory)
    print(
        f"{n} held-out images (seeds {SEED0}..{SEED0 + n - 1}) rendered in {time.time() - t0:.1f} s",
        file=sys.stderr,
    )
    labels_file = harness.shapes_labels_file(OUT)
    common = [str(directory), "-b", str(args.batch_size)]
    results = checks(truth, common, ["--labels-file", str(labels_file)], args.quick)
    report(results)
    harness.save_json(args.json, {"n": n, "seed0": SEED0, "targets": TARGETS, "results": results})
    print(f"\nwritten to {args.json} ({time.time() - t0:.0f} s in all)")


def checks(truth: Truth, common: list[str], labels: list[str], quick: bool) -> dict[str, Any]:
    """Every check's score, in the order of the table."""
    results: dict[str, Any] = {}

    def run(name: str, argv: list[str], correct: Correct) -> None:
        records, took = mmcli(*argv)
        results[name] = score(records, truth, correct) | {"seconds": round(took, 1)}
        print(f"  {name}: {results[name]['accuracy']:.1%} ({took:.0f} s)", file=sys.stderr)

    label_ok = lambda r, s: r["label"] == s.label  # noqa: E731
    run("classify shapes-clip", ["classify", *common, "--model", "shapes-clip", *labels], label_ok)
    for model in ("shapes-blip2", "shapes-llava"):
        run(
            f"caption {model}",
            ["caption", *common, "--model", model],
            lambda r, s: s.colour in words(r["caption"]) and s.shape in words(r["caption"]),
        )
        results |= vqa(truth, common, model)
    run("gen-classify shapes-llava", ["classify", *common, "--model", "shapes-llava", *labels], label_ok)
    if not quick:
        run("gen-classify shapes-blip2", ["classify", *common, "--model", "shapes-blip2", *labels], label_ok)
    return results


def vqa(truth: Truth, common: list[str], model: str) -> dict[str, Any]:
    """The colour and the shape questions, asked in one run: each one's score."""
    records, took = mmcli("vqa", *common, "--model", model, "--question", COLOUR_Q, "--question", SHAPE_Q)
    colour = [r for r in records if r.get("question") == COLOUR_Q or "error" in r]
    shape = [r for r in records if r.get("question") == SHAPE_Q or "error" in r]
    results = {
        f"vqa colour {model}": score(colour, truth, lambda r, s: r["answer"].strip().lower() == s.colour),
        f"vqa shape {model}": score(shape, truth, lambda r, s: r["answer"].strip().lower() == s.shape),
    }
    for result in results.values():
        result["seconds"] = round(took, 1)
    print(f"  vqa {model}: done ({took:.0f} s)", file=sys.stderr)
    return results


def report(results: dict[str, Any]) -> None:
    print("\n" + row(("check", "accuracy", "target"), (28, 9, 7)) + "  ")
    for name, r in results.items():
        target = TARGETS.get(name)
        mark = "" if target is None else harness.verdict(r["accuracy"], target, words=("ok", "BELOW"))
        shown = f"{target:.0%}" if target is not None else "-"
        print(row((name, r["accuracy"], shown), (28, 9, 7), ("", ".1%")) + f"  {mark}")
    for key in BREAKDOWNS:
        buckets = sorted({b for r in results.values() for b in r["by"][key]})
        widths = (28, *[15] * len(buckets))
        print(f"\nby {key}:")
        print(row(("", *(b[:15] for b in buckets)), widths))
        first = next(iter(results.values()))
        print(row(("(images)", *(first["counts"][key].get(b, 0) for b in buckets)), widths))
        for name, r in results.items():
            cells = (r["by"][key].get(b, float("nan")) for b in buckets)
            print(row((name, *cells), widths, ("", *[".1%"] * len(buckets))))
    print("\nsome errors:")
    for name, r in results.items():
        for line in r["wrong_examples"][:4]:
            print(f"  {name}: {line}")


if __name__ == "__main__":
    main()
