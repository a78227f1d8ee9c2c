"""The harness the bench scripts share; not a script itself.

``python bench/x.py`` puts bench/ first on ``sys.path``, so every script does ``import harness``. What is
here, once:

  paths and logging   ROOT, OUT (bench/out, git-ignored), ``log`` (timestamped, to stderr), ``src_first``
  timing              ``timed``, ``median`` / ``median_of`` / ``medians`` (None-skipping), ``cpu_name``
  a shared machine    ``Noise`` (CPU other processes took during a span), ``wait_for_quiet``
  subprocesses        ``offline_env`` / ``child_env``, ``MMCLI`` / ``mmcli_script``, ``run_timed`` (wall,
                      CPU, peak RSS, stdout lines with their arrival times)
  fixtures            ``ensure_built`` (a checkpoint built once under bench/out, with a stamp),
                      ``ensure_model`` (the random-weight ViT-B/32), ``ensure_images`` (640x480 JPEGs),
                      ``fresh_dir``, ``shapes_labels_file``, ``held_out_args`` (the shapes benches' options)
  results             ``verdict``, ``fmt``, ``row`` (a fixed-width table line), ``text_table``, ``save_json``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SRC = ROOT / "src"
MMCLI = [sys.executable, "-m", "mmcli"]  # the CLI of whatever mmcli this interpreter imports
STAMP = "bench-stamp.json"

# the classify benches' fixtures: the labels and template every CLIP run uses
TEMPLATE = "a photo of a {}."
LABELS = ["cat", "dog", "bird", "car", "tree", "house", "boat", "flower", "horse", "airplane"]


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def src_first() -> None:
    """Import mmcli from this checkout's src/, whatever the interpreter has installed."""
    sys.path.insert(0, str(SRC))


# -- timing ------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``fn()``'s wall time in seconds (perf_counter) and its result."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def median(values: Iterable[float]) -> float:
    """The median; NaN for no values."""
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def median_of(rows: Iterable[Mapping[str, Any]], key: str) -> float | None:
    """The median of ``row[key]`` over the rows where it is not None; None when it never is."""
    values = [row[key] for row in rows if row[key] is not None]
    return median(values) if values else None


def medians(rows: Sequence[Mapping[str, Any]], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """``median_of`` for each key (default: the first row's keys)."""
    return {key: median_of(rows, key) for key in (keys if keys is not None else rows[0])}


def cpu_name() -> str:
    """The CPU's model name and the number of cores, for the report's heading."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


# -- how busy the machine is with other work ---------------------------------------------------------


def _busy_seconds() -> float:
    """CPU-seconds all processes on the machine have used (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU-seconds of this process and of the children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Noise:
    """Measures the CPU other processes took during a span: 0.0 = quiet, 1.0 = one core's worth."""

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/stat")
        self.start()

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.busy0 = _busy_seconds() if self.available else 0.0
        self.own0 = _own_seconds()

    def cores(self) -> float | None:
        """Average number of cores other processes kept busy since start()."""
        if not self.available:
            return None
        wall = time.perf_counter() - self.t0
        foreign = (_busy_seconds() - self.busy0) - (_own_seconds() - self.own0)
        return max(0.0, foreign / wall) if wall > 0 else 0.0


WAITED = [0.0]  # seconds spent in wait_for_quiet, in all


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) for a second in which other processes use < ``threshold`` cores.

    Returns the seconds waited. The machine may be shared (tests running beside the bench): timing
    during a quiet spell makes the figures far more repeatable; after ``max_wait`` it goes on anyway.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        noise = Noise()
        time.sleep(1.0)
        cores = noise.cores()
        if cores is None or cores < threshold:
            break
    waited = time.perf_counter() - t0
    WAITED[0] += waited
    return waited


# -- subprocesses ------------------------------------------------------------------------------------


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child: the hub offline, no progress bars, a socket no ``mmcli serve``
    listens on (runs measure mmcli in its own process even where the user keeps a server), and ``extra``."""
    quiet = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "MMCLI_SOCKET": str(OUT / "no-server.sock"),
    }
    return {**os.environ, **quiet, **extra}


def child_env(threads: int) -> dict[str, str]:
    """``offline_env`` with ``threads`` OpenMP / MKL threads and no tokenizer threads."""
    return offline_env(
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false"
    )


def mmcli_script() -> str:
    """The ``mmcli`` console script beside this interpreter, else the one on PATH."""
    mmcli = str(Path(sys.executable).parent / "mmcli")
    return mmcli if Path(mmcli).exists() else shutil.which("mmcli") or "mmcli"


def run_timed(
    cmd: Sequence[str],
    env: dict[str, str],
    stamp_lines: bool = False,
    stdin: bytes | None = None,
    capture_stderr: bool = True,
) -> dict[str, Any]:
    """Run ``cmd``; wall time, exit status, rusage, stdout lines (with arrival times if asked).

    ``stdin``: bytes written to the command's input (then closed) before its output is read;
    ``capture_stderr`` False leaves its stderr on this process's.
    """
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdin=None if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err if capture_stderr else None,
            env=env,
        )
        assert proc.stdout is not None
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        lines: list[bytes] = []
        stamps: list[float] = []
        if stamp_lines:
            for line in proc.stdout:
                stamps.append(time.perf_counter() - t0)
                lines.append(line)
        else:
            lines = proc.stdout.read().splitlines(keepends=True)
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {
        "wall_s": wall,
        "rc": proc.returncode,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "lines": lines,
        "stamps": stamps,
        "stderr": stderr,
    }


# -- fixtures ----------------------------------------------------------------------------------------


def ensure_built(
    directory: Path, build: Callable[[Path], object], stamp: dict[str, Any] | None = None, what: str = ""
) -> Path:
    """``directory``, built once by ``build(path)`` and reused after.

    With ``stamp`` (what was built, as JSON), a directory whose bench-stamp.json differs is built again;
    without, one that has a config.json is reused. The build goes to DIRECTORY.partial and is renamed when
    complete, so an interrupted one is never taken for a finished one. ``what`` is logged when building.
    """
    marker = directory / STAMP
    if stamp is None and (directory / "config.json").is_file():
        return directory
    if stamp is not None and marker.is_file() and json.loads(marker.read_text()) == stamp:
        return directory
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if what:
        log(f"building {what} ...")
    build(tmp)
    if stamp is not None:
        (tmp / STAMP).write_text(json.dumps(stamp))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def prompt_words() -> list[str]:
    """The words of the prompts, so the checkpoint's tokenizer gives each one token, as CLIP's does.

    In prompt order, template first: clip_tokenizer chains each word's merges in turn, and with the labels
    first "horse" takes the pair "ho" before "photo" can (photo then splits in four).
    """
    prompts = (TEMPLATE.format(label).lower() for label in LABELS)
    return list(dict.fromkeys(w for prompt in prompts for w in re.findall(r"[a-z]+", prompt)))


def ensure_model(out: Path) -> Path:
    """The ViT-B/32 checkpoint in out/clip-vit-b32 (mmcli.testing.contrastive.build_clip_vit_b32), built once."""
    from mmcli.testing.contrastive import build_clip_vit_b32

    wanted = {"builder": "mmcli.testing.contrastive.build_clip_vit_b32", "seed": 0, "words": prompt_words()}
    return ensure_built(
        out / "clip-vit-b32",
        lambda path: build_clip_vit_b32(path, seed=0, words=wanted["words"]),
        wanted,
        "the ViT-B/32 checkpoint (random weights, offline)",
    )


def _make_image(index: int, path: Path) -> None:
    """A deterministic 640x480 JPEG (quality 90): a noisy gradient under random ellipses and boxes."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(index)
    base = rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, 640)[None, :, None] * base
    pixels = (ramp + rng.normal(0.0, 20.0, (480, 640, 3))).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, 600)), int(rng.integers(0, 440))
        box = (x0, y0, x0 + int(rng.integers(10, 200)), y0 + int(rng.integers(10, 200)))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.integers(0, 2) else draw.rectangle)(box, fill=color)
    image.save(path, quality=90)


def ensure_images(out: Path, count: int) -> list[Path]:
    """out/images-COUNT/img_0000.jpg ...: exactly ``count`` images, each a function of its index."""
    directory = out / f"images-{count}"
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"img_{i:04d}.jpg" for i in range(count)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        log(f"writing {len(missing)} images to {directory} ...")
        for i, p in missing:
            _make_image(i, p)
    return paths


def fresh_dir(directory: Path) -> Path:
    """``directory``, created if need be and emptied of files."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    return directory


def shapes_labels_file(out: Path) -> Path:
    """out/shapes-labels.txt: the shapes world's 24 "<colour> <shape>" labels, one a line."""
    from mmcli.testing import shapes

    path = out / "shapes-labels.txt"
    path.write_text("\n".join(shapes.labels()) + "\n")
    return path


def held_out_args(
    doc: str, n: int, quick: int, n_help: str, quick_help: str, json_name: str
) -> argparse.Namespace:
    """The options of the benches on freshly rendered shapes: --n, --quick, --json, --batch-size.

    ``args.n`` is ``quick`` with --quick; --json defaults to bench/out/JSON_NAME.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--n", type=int, default=n, help=n_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=Path, default=OUT / json_name)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.quick:
        args.n = quick
    return args


# -- results -----------------------------------------------------------------------------------------


def verdict(
    value: float | None, target: float, at_least: bool = True, words: tuple[str, str] = ("MET", "MISSED")
) -> str:
    """``words[0]`` when ``value`` meets ``target`` (at least it, or at most with ``at_least`` False),
    else ``words[1]``; "n/a" for no value."""
    if value is None:
        return "n/a"
    return words[0] if (value >= target if at_least else value <= target) else words[1]


def fmt(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted, or "n/a"."""
    return "n/a" if value is None else format(value, spec)


def row(cells: Sequence[Any], widths: Sequence[int], specs: Sequence[str] = (), sep: str = " ") -> str:
    """One line of a fixed-width table: the first cell left-aligned, the others right-aligned, each
    formatted with its spec (``specs``, "" where absent: text as it is)."""
    specs = [*specs, *[""] * (len(cells) - len(specs))]
    return sep.join(
        format(cell, f"{'<' if i == 0 else '>'}{width}{spec}")
        for i, (cell, width, spec) in enumerate(zip(cells, widths, specs, strict=True))
    )


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A table of text cells as lines: columns as wide as their widest cell, " | " between, a rule."""
    sizes = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(h.ljust(sizes[i]) for i, h in enumerate(header)), "-+-".join("-" * s for s in sizes)]
    lines += [" | ".join(c.ljust(sizes[i]) for i, c in enumerate(r)) for r in rows]
    return lines


def save_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON in ``path`` (its folder created), ending with a newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
