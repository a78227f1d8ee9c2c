"""Benchmark of coverage: every image-text-to-text model type of the installed transformers, through mmcli.

For each model type in transformers' ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``, a tiny checkpoint is
built generically from its config class (every hidden size, layer count, head count and vocabulary of the
config and its sub-configs shrunk; a 4 x 4 patch grid), with the real processor class transformers maps
the type to, its image processor, and a byte-level tokenizer holding every token-like string the
processor's module names. No chat template is given: nothing generic knows a family's layout. Then
``mmcli caption``, ``vqa`` and ``classify`` run on it as users run them (a subprocess each, with a timeout).

Each cell is "works", "refused: <mmcli's one-line message>", "build failed: <reason>" or
"crash: <last line>" (a traceback, an internal error, a nonzero exit with no mmcli message, or a
timeout). Prints the table and the counts; asserts nothing. Results go to bench/out/coverage/results.jsonl
one line per type as they finish, so a second run resumes (``--fresh`` starts over).

    python bench/coverage.py                        # every type, 2 at a time
    python bench/coverage.py --types llava,qwen2_vl # a subset
    python bench/coverage.py --fresh --jobs 1

Builds happen in a subprocess per type (``--build TYPE --dir DIR``), so a build that hangs or dies is that
type's "build failed" and nothing more.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import coverage_build  # the generic tiny build (--build TYPE --dir DIR)
import harness  # bench/harness.py: the table, the environment
from harness import ROOT, SRC

OUT = ROOT / "bench" / "out" / "coverage"
TASKS = ("caption", "vqa", "classify")
TASK_ARGS = {
    "caption": ["--max-new-tokens", "4"],
    "vqa": ["--question", "What is in the image?", "--max-new-tokens", "4"],
    "classify": ["--labels", "cat,dog"],
}
ENV = harness.offline_env(
    TOKENIZERS_PARALLELISM="false",
    OMP_NUM_THREADS="1",
    PYTHONPATH=os.pathsep.join([str(ROOT), str(SRC)]),  # tests.zoo; this checkout's mmcli
)
ERROR_LINE = re.compile(r"^mmcli: error: (.*)$")


# -- the builds (each in a subprocess: --build TYPE --dir DIR) ---------------------------------------------
def build_main(model_type: str, out: Path) -> int:
    """The generic build; when it fails and the zoo (tests/zoo.py) has a recipe for the type, that one."""
    from tests import zoo

    from mmcli.modeling.backends.base import quiet_transformers

    quiet_transformers()
    try:
        built = coverage_build.build_generic(model_type, out)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        first = text[0] if text else ""
        reason = first if isinstance(exc, RuntimeError) and first else f"{type(exc).__name__}: {first}"
        family = zoo.family_of(model_type)
        if family is None:
            print(json.dumps({"ok": False, "reason": reason[:300]}))
            return 0
        zoo.build(family, out)
        built = {"recipe": family, "generic": reason[:300]}
    print(json.dumps({"ok": True, **built}))
    return 0


def precheck(model_type: str) -> str | None:
    """Why no build can work, known from transformers' mappings alone (no subprocess needed)."""
    from tests import zoo

    if zoo.family_of(model_type) is not None:
        return None
    try:
        coverage_build.processor_classes(model_type)
    except LookupError as exc:
        return f"LookupError: {exc}"
    return None


# -- running mmcli -----------------------------------------------------------------------------------------
def outcome(proc: subprocess.CompletedProcess[str] | None, timeout: float) -> str:
    """works | refused: <line> | crash: <last line>."""
    if proc is None:
        return f"crash: timeout after {timeout:.0f} s"
    err = proc.stderr.strip().splitlines()
    last = err[-1].strip() if err else f"exit status {proc.returncode}"
    if "Traceback (most recent call last)" in proc.stderr or "internal error" in proc.stderr:
        internal = [line for line in err if "internal error" in line]
        return f"crash: {(internal or [last])[0].removeprefix('mmcli: ')}"
    if proc.returncode == 0:
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        return "works" if records else "crash: exit 0 and no records"
    message = next((m.group(1) for m in map(ERROR_LINE.match, err) if m), None)
    if message:
        return f"refused: {message}"
    if proc.returncode == 3:  # every input got an error record: mmcli's message is in the records
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        errors = [r["error"] for r in records if r.get("error")]
        if errors:
            return f"refused: {errors[0]}"
    return f"crash: {last}"


def run_task(task: str, model: Path, image: Path, timeout: float) -> str:
    command = [sys.executable, "-m", "mmcli", task, str(image), "--model", str(model), *TASK_ARGS[task]]
    command += ["--format", "jsonl", "--no-cache", "--workers", "0"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return outcome(None, timeout)
    return outcome(proc, timeout)


def run_type(model_type: str, args: argparse.Namespace, image: Path) -> dict[str, Any]:
    start = time.perf_counter()
    directory = OUT / "models" / model_type
    row: dict[str, Any] = {"type": model_type}
    reason = precheck(model_type)
    built = {"ok": False, "reason": reason} if reason else build(model_type, directory, args.timeout)
    if not built["ok"]:
        row["build"] = f"build failed: {built['reason']}"
        for task in TASKS:
            row[task] = "build failed"
    else:
        row["build"] = f"zoo recipe {built['recipe']}" if "recipe" in built else "built"
        if "generic" in built:
            row["generic"] = built["generic"]
        for task in TASKS:
            row[task] = run_task(task, directory, image, args.timeout)
    row["seconds"] = round(time.perf_counter() - start, 1)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(directory)], check=False)
    return row


def build(model_type: str, directory: Path, timeout: float) -> dict[str, Any]:
    """``--build`` in a subprocess: what it printed, or why it printed nothing."""
    command = [sys.executable, __file__, "--build", model_type, "--dir", str(directory)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"timeout after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "reason": _last(proc.stderr, proc.returncode)}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _last(text: str, code: int) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:300] if lines else f"exit status {code}"


# -- the report --------------------------------------------------------------------------------------------
def kind(cell: str) -> str:
    return cell.split(":", 1)[0]


def report(rows: list[dict[str, Any]], width: int) -> None:
    header = ("model type", "build", *TASKS)
    cells = [(r["type"], r["build"], *(r[t] for t in TASKS)) for r in rows]
    short = [[c if len(c) <= width else c[: width - 1] + "…" for c in row] for row in cells]
    print("\n".join(harness.text_table(header, short)))
    print()
    generic = sum(1 for r in rows if r["build"] == "built")
    recipes = sum(1 for r in rows if r["build"].startswith("zoo recipe"))
    failed = len(rows) - generic - recipes
    print(
        f"{len(rows)} model types: {generic} built generically, {recipes} from the zoo's recipes "
        f"(tests/zoo.py) where the generic build failed, {failed} build failed"
    )
    for task in TASKS:
        counts: dict[str, int] = {}
        for r in rows:
            counts[kind(r[task])] = counts.get(kind(r[task]), 0) + 1
        order = ("works", "refused", "build failed", "crash")
        print(f"  {task:8}  " + ", ".join(f"{k} {counts.get(k, 0)}" for k in order))
    crashes = sum(1 for r in rows for t in TASKS if kind(r[t]) == "crash")
    print(f"crashes: {crashes} (target 0)")


def model_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def sample_image() -> Path:
    import numpy as np
    from PIL import Image

    path = OUT / "image.png"
    if not path.is_file():
        OUT.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    return path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", help="comma-separated model types (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="model types at a time (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per build and per command")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results and run again")
    parser.add_argument("--keep", action="store_true", help="keep the built checkpoints under bench/out")
    parser.add_argument("--width", type=int, default=70, help="widest cell of the table")
    parser.add_argument("--build", metavar="TYPE", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        return args
    known = model_types()
    args.types = [t.strip() for t in args.types.split(",")] if args.types else known
    unknown = [t for t in args.types if t not in known]
    if unknown:
        parser.error(f"not image-text-to-text model types here: {', '.join(unknown)}")
    return args


def earlier(results: Path, fresh: bool) -> dict[str, dict[str, Any]]:
    """The rows of results.jsonl by type (a resumed run's); none, and the file gone, with ``fresh``."""
    done: dict[str, dict[str, Any]] = {}
    if results.is_file() and not fresh:
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done[row["type"]] = row
    elif results.is_file():
        results.unlink()
    return done


def main() -> int:
    args = parse_args()
    if args.build:
        return build_main(args.build, args.dir)
    types = args.types
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "results.jsonl"
    done = earlier(results, args.fresh)
    todo = [t for t in types if t not in done]
    print(
        f"{len(types)} model types, {len(types) - len(todo)} from {results}, {len(todo)} to run",
        file=sys.stderr,
    )
    image = sample_image()
    lock = threading.Lock()
    start = time.perf_counter()

    def one(model_type: str) -> None:
        row = run_type(model_type, args, image)
        with lock:
            done[model_type] = row
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            cells = ", ".join(f"{t} {kind(row[t])}" for t in TASKS)
            print(f"[{len(done)}/{len(types)}] {model_type}: {row['build'][:60]}; {cells}", file=sys.stderr)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, todo))
    print(f"{time.perf_counter() - start:.0f} s for {len(todo)} model types\n", file=sys.stderr)
    report([done[t] for t in types if t in done], args.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
