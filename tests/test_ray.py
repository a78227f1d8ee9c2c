"""--engine ray against a real local Ray (one per module, 2 CPUs, fractional actor CPUs) and, once, against a
real cluster started with ``ray start --head`` on a free port and stopped by its process id.

Every check compares with the local engine: the same records, bad inputs included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_mmcli

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module; the CLI joins it instead of starting its own (faster)."""
    import logging

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> list[str]:
    """Good images of several formats and sizes, a corrupt file and a path that does not exist."""
    bad = tmp_path_factory.mktemp("bad")
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return [str(image_dir), str(bad / "corrupt.jpg"), str(bad / "missing.png")]


def close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    """Equal records, floats (nested too) within ``tol``."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def same_records(cli: Callable[..., Any], *args: str | Path) -> list[dict[str, Any]]:
    local = cli(*args, "--format", "jsonl")
    remote = cli(*args, "--format", "jsonl", "--engine", "ray")
    assert remote.code == local.code, remote.stderr
    a, b = local.jsonl(), remote.jsonl()
    assert len(a) == len(b) and a
    for x, y in zip(a, b, strict=True):
        assert close(x, y), (x, y)
    return b


def errors_of(records: list[dict[str, Any]]) -> dict[str, str]:
    return {Path(r["input"]).name: r["error"] for r in records if "error" in r}


@pytest.mark.usefixtures("local_ray")
def test_classify_tiny_clip_same_records_bad_inputs_included(
    cli: Callable[..., Any], tiny_clip: Path, inputs: list[str]
) -> None:
    records = same_records(cli, "classify", *inputs, "--model", tiny_clip, "--labels", "cat,dog,car")
    errors = errors_of(records)
    assert sorted(errors) == ["corrupt.jpg", "missing.png"]
    assert errors["missing.png"] == "no such file or directory"
    assert len(records) == 7


@pytest.mark.usefixtures("local_ray")
def test_classify_shapes_clip_same_scores(cli: Callable[..., Any]) -> None:
    records = same_records(
        cli,
        "classify",
        SAMPLES,
        "--model",
        "shapes-clip",
        "--labels-file",
        SAMPLES / "shapes-labels.txt",
        "--top-k",
        "3",
    )
    top = {Path(r["input"]).name: r["label"] for r in records}
    assert top["shapes-red-circle.png"] == "red circle"


@pytest.mark.usefixtures("local_ray")
def test_caption_and_vqa_same_text(cli: Callable[..., Any], inputs: list[str]) -> None:
    shapes = sorted(str(p) for p in SAMPLES.glob("shapes-*.png"))
    records = same_records(cli, "caption", *shapes, inputs[1], "--model", "shapes-blip2")
    assert any(r.get("caption") == "a red circle" for r in records)
    answers = same_records(
        cli,
        "vqa",
        *shapes,
        inputs[2],
        "--model",
        "shapes-llava",
        "--question",
        "What color is the shape?",
        "--question",
        "What shape is it?",
    )
    assert len(answers) == 2 * len(shapes) + 1  # two per image, one error for the missing path


@pytest.mark.usefixtures("local_ray")
def test_manifest_input_same_records(
    cli: Callable[..., Any], tiny_clip: Path, image_dir: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "inputs.jsonl"
    rows = [{"path": str(image_dir / n)} for n in ("a.jpg", "sub/d.jpg", "missing.png")]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = same_records(
        cli, "classify", "--manifest", manifest, "--model", tiny_clip, "--labels", "cat,dog"
    )
    assert [Path(r["input"]).name for r in records] == ["a.jpg", "d.jpg", "missing.png"]
    assert "error" in records[2]


def test_embed_same_vectors_with_texts(cli: Callable[..., Any], tiny_clip: Path, inputs: list[str]) -> None:
    records = same_records(cli, "embed", *inputs, "--model", tiny_clip, "--text", "a cat", "--no-cache")
    assert [r["text"] for r in records[:1]] == ["a cat"]
    assert len(errors_of(records)) == 2


@pytest.mark.usefixtures("local_ray")
def test_resume_computes_only_missing_records(
    cli: Callable[..., Any], tiny_clip: Path, inputs: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    args = ["classify", *inputs, "--model", str(tiny_clip), "--labels", "cat,dog", "--output", str(out)]
    first = cli(*args, "--engine", "ray")
    assert first.code == 3, first.stderr
    lines = out.read_text().splitlines()
    good = [line for line in lines if '"error"' not in line]
    out.write_text("\n".join(line for line in lines if line not in good[:2]) + "\n")  # lose two records
    again = cli(*args, "--engine", "ray", "--summary-json", str(tmp_path / "summary.json"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (2, 3, 2), again.stderr

    def by_input(text: str) -> list[dict[str, Any]]:
        return sorted((json.loads(line) for line in text.splitlines()), key=lambda r: r["input"])

    assert close(by_input(out.read_text()), by_input("\n".join(lines)))


@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_directory_url_output_and_resume(
    cli: Callable[..., Any], tiny_clip: Path, inputs: list[str], tmp_path: Path, fmt: str
) -> None:
    import pyarrow.dataset as pads

    url = (tmp_path / "out").as_uri() + "/"
    args = ["classify", *inputs, "--model", str(tiny_clip), "--labels", "cat,dog", "--output", url]
    first = cli(*args, "--format", fmt, "--engine", "ray")
    assert first.code == 3, first.stderr
    table = pads.dataset(tmp_path / "out", format="json" if fmt == "jsonl" else "parquet").to_table()
    rows = sorted(table.to_pylist(), key=lambda r: r["input"])
    local = sorted(cli(*args[:-2], "--format", "jsonl").jsonl(), key=lambda r: r["input"])
    assert [r["input"] for r in rows] == [r["input"] for r in local]
    for row, rec in zip(rows, local, strict=True):
        assert row["key"]
        if "error" in rec:
            assert row["error"] == rec["error"]
        else:
            assert row["label"] == rec["label"] and abs(row["score"] - rec["score"]) <= 1e-6
    again = cli(*args, "--format", fmt, "--engine", "ray", "--summary-json", str(tmp_path / "s.json"))
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 5, 2), again.stderr


def test_without_ray_says_how_to_install(
    cli: Callable[..., Any], tiny_clip: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = cli("classify", image_dir, "--model", tiny_clip, "--labels", "a,b", "--engine", "ray")
    assert result.code == 2
    assert "pip install 'mmcli[ray]'" in result.stderr


def test_compare_is_not_for_ray(cli: Callable[..., Any], tiny_clip: Path, image_dir: Path) -> None:
    result = cli("compare", image_dir, "--model", tiny_clip, "--text", "a cat", "--engine", "ray")
    assert result.code == 2
    assert "--engine ray" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_cluster_started_with_ray_start(tiny_clip: Path, image_dir: Path) -> None:
    """`ray start --head --block` in its own process group, stopped by its process id (never `ray stop`,
    which would stop every Ray on the machine)."""
    port = free_port()
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [
            *(ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2"),
            *("--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the head takes a few seconds to listen
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and head.poll() is None, "ray start --head failed"
                time.sleep(0.5)
        args = [
            "classify",
            str(image_dir),
            "--model",
            str(tiny_clip),
            "--labels",
            "cat,dog",
            "--format",
            "jsonl",
        ]
        remote = run_mmcli(*args, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", env=env)
        assert remote.code == 0, remote.stderr
        local = run_mmcli(*args)
        assert len(remote.jsonl()) == 5
        for x, y in zip(local.jsonl(), remote.jsonl(), strict=True):
            assert close(x, y)
    finally:
        stop_group(head)
        shutil.rmtree(temp, ignore_errors=True)


def stop_group(head: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the process group of `ray start` (its GCS, raylet and workers). A SIGTERM would be
    gentler but makes the head drain for up to 30 s; the group holds nothing else and its temp dir goes."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(10)
