"""Benchmark: a warm ``mmcli serve`` against loading the model in the process, side by side in one run.

1. Latency: median wall time of a one-image ``mmcli classify`` with the bundled ``shapes-clip``, through the
   CLI (a new process each time, as a shell loop or an editor plugin calls it), with a warm server and with
   ``--no-server``. Targets: <= 0.15 s and >= 20x. The embedding cache is off in both (a cache hit would
   make the server's figure look better than a new photo gets).
2. Throughput: 8 concurrent clients (processes, one connection each, as ``mmcli.Client`` does) each sending
   32 images one request at a time, against one local batched run (``--no-server``, batch 16) over the same
   256 images: images/s of each; the local run's figure is its summary's (model time, loading excluded).
   Target: >= 70 %. The server's forward passes are counted: batching across clients shows there.
3. Peak memory of the server process and its decoder processes (VmHWM), and the idle unload: the seconds
   from the last request until the server reports no model loaded (``--keep-alive 2s``).

Prints figures, never asserts.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py [--rounds 7] [--local-rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness  # bench/harness.py: the timing, the medians, the verdicts
from harness import MMCLI, ROOT

IMAGE = ROOT / "samples" / "shapes-red-circle.png"
LABELS = ROOT / "samples" / "shapes-labels.txt"
CLIENTS, PER_CLIENT = 8, 32
TARGET_S, TARGET_RATIO, TARGET_SHARE = 0.15, 20.0, 0.70
MET = ("met", "MISSED")


def mmcli(*args: str, env: dict[str, str]) -> float:
    wall, proc = harness.timed(lambda: subprocess.run([*MMCLI, *args], env=env, capture_output=True))
    if proc.returncode != 0:
        raise SystemExit(f"mmcli {' '.join(args)} failed: {proc.stderr.decode()}")
    return float(wall)


def classify(target: Path, *extra: str, env: dict[str, str]) -> float:
    """``mmcli classify TARGET`` with shapes-clip, its labels and no embedding cache; the wall time."""
    return mmcli(
        "classify", str(target), "--model", "shapes-clip", "--labels-file", str(LABELS), "--no-cache", "-q",
        *extra, env=env,
    )  # fmt: skip


def one_image(env: dict[str, str], *extra: str) -> float:
    return classify(IMAGE, "-f", "jsonl", *extra, env=env)


def make_images(folder: Path, n: int) -> list[Path]:
    from PIL import Image, ImageDraw

    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    files = []
    for i in range(n):
        image = Image.new("RGB", (128, 128), "white")
        draw = ImageDraw.Draw(image)
        r = 20 + (i * 7) % 40
        draw.ellipse((64 - r, 64 - r, 64 + r, 64 + r), fill=colors[i % len(colors)])
        path = folder / f"img{i:03d}.png"
        image.save(path)
        files.append(path)
    return files


CLIENT = """
import sys, time
from mmcli.commands.classify import ContrastiveClassify
from mmcli.server.engine import ImageInput, Limits, ModelKey
from mmcli.run.remote.client import Remote
from mmcli.modeling.registry import resolve
remote = Remote.open(sys.argv[1])
labels = [l.strip() for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")]
task = ContrastiveClassify(labels, None, None, None, False, 0.5)
task.model = resolve("shapes-clip").label
key, limits = ModelKey("shapes-clip"), Limits(use_cache=False)
files = sys.argv[4:]
while time.time() < float(sys.argv[3]):
    time.sleep(0.001)
for f in files:
    remote.run(key, task, [ImageInput(f, open(f, "rb").read())], limits)
"""


def concurrent_clients(sock: Path, files: list[Path], env: dict[str, str]) -> float:
    start_at = time.time() + 1.5  # every client connected and imported before the clock starts
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT,
                str(sock),
                str(LABELS),
                str(start_at),
                *map(str, files[i * PER_CLIENT : (i + 1) * PER_CLIENT]),
            ],
            env=env,
        )
        for i in range(CLIENTS)
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("a client failed")
    return CLIENTS * PER_CLIENT / (time.time() - start_at)


def local_batched(folder: Path, summary: Path, env: dict[str, str]) -> float:
    classify(
        folder, "-o", str(summary.with_suffix(".jsonl")), "--overwrite", "--batch-size", "16", "--no-server",
        "--summary-json", str(summary), env=env,
    )  # fmt: skip
    return float(json.loads(summary.read_text())["items_per_s"])


def tree_peak_mb(pid: int) -> float:
    """VmHWM of a process and its children (the decoder processes), in MB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


@contextlib.contextmanager
def server(
    work: Path, env: dict[str, str], batch_wait: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``mmcli serve --keep-alive 2s`` (and ``--batch-wait``), logging to WORK/server.log, once it listens;
    stopped on exit."""
    log = open(work / "server.log", "wb")  # noqa: SIM115
    wait = ["--batch-wait", batch_wait] if batch_wait else []
    proc = subprocess.Popen(
        [*MMCLI, "serve", "--keep-alive", "2s", *wait], env=env, stderr=log, stdout=subprocess.DEVNULL
    )
    try:
        while b"listening on" not in (work / "server.log").read_bytes():
            if proc.poll() is not None:
                raise SystemExit((work / "server.log").read_text())
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def latency(args: argparse.Namespace, env: dict[str, str]) -> None:
    """1. One-image classify through the CLI, warm server against --no-server, interleaved."""
    one_image(env)  # loads the model in the server
    served, local = [], []
    for i in range(max(args.rounds, args.local_rounds)):  # interleaved: the machine's noise hits both
        if i < args.rounds:
            served.append(one_image(env))
        if i < args.local_rounds:
            local.append(one_image(env, "--no-server"))
    s, l_ = harness.median(served), harness.median(local)
    print(
        f"one-image classify via the CLI: warm server {s:.3f} s (median of {len(served)}), "
        f"--no-server {l_:.3f} s (median of {len(local)}): {l_ / s:.1f}x faster"
    )
    print(
        f"  target <= {TARGET_S} s: {harness.verdict(s, TARGET_S, at_least=False, words=MET)}; "
        f"target >= {TARGET_RATIO:.0f}x: {harness.verdict(l_ / s, TARGET_RATIO, words=MET)}"
    )


def throughput(
    args: argparse.Namespace, remote: Any, files: list[Path], work: Path, env: dict[str, str]
) -> None:
    """2. Concurrent clients through the server against one local batched run over the same images."""
    folder = files[0].parent
    shares = []
    for _ in range(args.throughput_rounds):
        before = remote.status()["forward_passes"]
        clients = concurrent_clients(Path(env["MMCLI_SOCKET"]), files, env)
        passes = remote.status()["forward_passes"] - before
        batched = local_batched(folder, work / "summary.json", env)
        shares.append(clients / batched)
        print(
            f"  {CLIENTS} clients x {PER_CLIENT} one-image requests: {clients:.1f} images/s in {passes} "
            f"forward passes; local batched run: {batched:.1f} images/s; {clients / batched:.0%}"
        )
    share = harness.median(shares)
    print(
        f"8 concurrent clients vs one batched run: {share:.0%} of its images/s (median of {len(shares)}); "
        f"target >= {TARGET_SHARE:.0%}: {harness.verdict(share, TARGET_SHARE, words=MET)}"
    )


def idle_unload(remote: Any, work: Path) -> None:
    """3. One more request, then the seconds until the server reports no model loaded."""
    from mmcli.commands.classify import ContrastiveClassify
    from mmcli.run.remote.work import ImageInput, Limits, ModelKey

    task = ContrastiveClassify(["red", "blue"], None, None, None, False, 0.5)
    remote.run(
        ModelKey("shapes-clip"), task, [ImageInput("last", IMAGE.read_bytes())], Limits(use_cache=False)
    )
    last = time.monotonic()  # the last request's answer
    while remote.status()["models"]:
        time.sleep(0.1)
        if time.monotonic() - last > 30:
            print("idle unload: NOT observed within 30 s")
            break
    else:
        print(
            f"idle unload (--keep-alive 2s): no model loaded {time.monotonic() - last:.1f} s after the "
            f"last request; log: {(work / 'server.log').read_text().splitlines()[-1].strip()}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="one-image calls through the server")
    parser.add_argument("--local-rounds", type=int, default=3, help="one-image calls with --no-server")
    parser.add_argument("--throughput-rounds", type=int, default=3)
    parser.add_argument("--batch-wait", default=None, help="the server's --batch-wait (default: its own)")
    args = parser.parse_args()

    from mmcli.run.remote.client import Remote

    work = Path(tempfile.mkdtemp(prefix="mmcli-bench-serve-"))
    run_dir = work / "run"
    run_dir.mkdir(mode=0o700)
    sock = run_dir / "mmcli.sock"
    env = harness.offline_env(MMCLI_SOCKET=str(sock), MMCLI_CACHE_DIR=str(work / "cache"))
    (work / "images").mkdir()
    files = make_images(work / "images", CLIENTS * PER_CLIENT)
    with server(work, env, args.batch_wait) as proc:
        latency(args, env)
        remote = Remote.open(sock)
        throughput(args, remote, files, work, env)
        print(f"peak server memory (server + decoder processes, VmHWM): {tree_peak_mb(proc.pid):.0f} MB")
        idle_unload(remote, work)
        remote.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
