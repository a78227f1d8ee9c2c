"""User-facing I/O defects, each through the CLI: sidecars, manifest rows, stdout-like and unwritable
--output, a closed pipe, pull's refusals and doctor's cache directory."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_mmcli

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SQUARE, CIRCLE, TRIANGLE = (SAMPLES / n for n in ("blue-square.jpg", "red-circle.png", "green-triangle.png"))
CLASSIFY = ["classify", "--model", "shapes-clip", "-l", "circle,square,triangle"]
CAPTION = ["caption", "--model", "shapes-blip2", "--max-new-tokens", "4", "--sidecar", "txt"]


@pytest.fixture(autouse=True)
def _bundled_models() -> None:
    if not (SAMPLES.parent / "models" / "shapes-clip").is_dir():
        pytest.skip("the bundled models/ are not in this checkout")


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mmcli: error: ") and "internal error" not in lines[0], stderr
    return lines[0]


def mmcli(*args: object, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """A real subprocess with the given stdout/stderr/umask arrangements."""
    return subprocess.run(
        [sys.executable, "-m", "mmcli", *map(str, args)], timeout=timeout, check=False, **kwargs
    )


# -- 1. sidecars ------------------------------------------------------------------------------------------
@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """cat.jpg and cat.png (one sidecar name), dog.png beside a caption the user wrote."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SQUARE, folder / "cat.jpg")
    shutil.copy(CIRCLE, folder / "cat.png")
    shutil.copy(TRIANGLE, folder / "dog.png")
    (folder / "dog.txt").write_text("my own caption\n")
    return folder


@pytest.mark.parametrize("extension", ["jpg", "png", ".JPEG", "x.webp"])
def test_a_sidecar_extension_that_names_images_is_refused(photos: Path, extension: str) -> None:
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    result = run_mmcli("caption", photos, "--model", "shapes-blip2", "--sidecar", extension)
    assert result.code == 2 and "image extension" in one_line(result.stderr)
    assert result.stdout == b""
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_sidecars_never_replace_files_mmcli_did_not_write(photos: Path) -> None:
    image_bytes = {n: (photos / n).read_bytes() for n in ("cat.jpg", "cat.png", "dog.png")}
    result = run_mmcli(*CAPTION, photos)
    assert result.code == 3, result.stderr
    records = {Path(r["input"]).name: r for r in result.jsonl()}
    assert (photos / "cat.txt").read_text() == records["cat.jpg"]["caption"] + "\n"
    assert "sidecar of cat.jpg" in records["cat.png"]["error"]  # two inputs, one sidecar: the second fails
    assert "not a sidecar mmcli wrote" in records["dog.png"]["error"]
    assert (photos / "dog.txt").read_text() == "my own caption\n"
    assert {n: (photos / n).read_bytes() for n in image_bytes} == image_bytes
    assert "cat.png" in result.stderr and "dog.png" in result.stderr  # the usual failure lines
    assert not list(photos.glob(".mmcli-*.tmp"))


def test_a_rerun_rewrites_its_own_sidecars_but_not_edited_ones(tmp_path: Path) -> None:
    shutil.copy(SQUARE, tmp_path / "a.jpg")
    shutil.copy(CIRCLE, tmp_path / "b.png")
    out = tmp_path / "out.jsonl"
    assert run_mmcli(*CAPTION, tmp_path / "a.jpg", tmp_path / "b.png", "-o", out).code == 0
    (tmp_path / "a.txt").write_text("stale, but mmcli's\n")  # not what mmcli wrote: edited by hand
    (tmp_path / "b.txt").write_bytes((tmp_path / "b.txt").read_bytes())  # same content: still mmcli's
    again = run_mmcli(*CAPTION, tmp_path / "a.jpg", tmp_path / "b.png", "-o", out, "--overwrite")
    assert again.code == 3
    errors = {Path(r["input"]).name: r.get("error") for r in map(json.loads, out.read_text().splitlines())}
    assert errors["b.png"] is None and "edited" in str(errors["a.jpg"])
    assert (tmp_path / "a.txt").read_text() == "stale, but mmcli's\n"
    (tmp_path / "a.txt").unlink()  # the user lets mmcli write it again; a resume redoes the failed input
    third = run_mmcli(*CAPTION, tmp_path / "a.jpg", tmp_path / "b.png", "-o", out)
    assert third.code == 0, third.stderr
    assert (tmp_path / "a.txt").read_text().strip()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_sidecars_honour_the_umask(tmp_path: Path, umask: int) -> None:
    shutil.copy(SQUARE, tmp_path / "a.jpg")
    result = mmcli(*CAPTION, tmp_path / "a.jpg", capture_output=True, preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask


# -- 2. manifest rows ---------------------------------------------------------------------------------------
def test_every_jsonl_manifest_row_gives_a_record_or_an_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [{"url": str(SQUARE)}, {"path": str(CIRCLE)}, {"url": None}, {"url": None, "path": str(TRIANGLE)}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_mmcli(*CLASSIFY, "--manifest", manifest)
    assert result.code == 3, result.stderr
    records = result.jsonl()
    assert [r["input"] for r in records] == [str(SQUARE), str(CIRCLE), f"{manifest} line 3", str(TRIANGLE)]
    assert "no path or URL" in records[2]["error"] and f"{manifest} line 3" in result.stderr


def test_csv_and_parquet_rows_with_an_empty_cell_are_errors(tmp_path: Path) -> None:
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text(f"id,path\n1,{SQUARE}\n2,\n3\n4,{CIRCLE}\n")
    result = run_mmcli(*CLASSIFY, "--manifest", csv_manifest)
    assert result.code == 3
    assert [r["input"] for r in result.jsonl()] == [
        str(SQUARE),
        f"{csv_manifest} line 3",
        f"{csv_manifest} line 4",
        str(CIRCLE),
    ]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [str(SQUARE), None, ""]}), parquet)
    inputs = [r["input"] for r in run_mmcli(*CLASSIFY, "--manifest", parquet).jsonl()]
    assert inputs == [str(SQUARE), f"{parquet} row 2", f"{parquet} row 3"]


# -- 3. stdout-like --output ----------------------------------------------------------------------------------
def test_output_dev_stdout_in_a_pipe_and_redirected(tmp_path: Path) -> None:
    lock_existed = os.path.lexists("/dev/stdout.lock")
    piped = mmcli(*CLASSIFY, SQUARE, CIRCLE, "-o", "/dev/stdout", capture_output=True, timeout=90)
    assert piped.returncode == 0, piped.stderr
    records = [json.loads(line) for line in piped.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(SQUARE), str(CIRCLE)]
    assert all("key" not in r for r in records)  # a stream: no resume keys
    target = tmp_path / "redirected.jsonl"
    with open(target, "wb") as f:
        again = mmcli(
            *CLASSIFY, SQUARE, CIRCLE, "-o", "/dev/stdout", stdout=f, stderr=subprocess.PIPE, timeout=90
        )
    assert again.returncode == 0, again.stderr
    assert [json.loads(line) for line in target.read_bytes().splitlines()] == records
    assert os.path.lexists("/dev/stdout.lock") == lock_existed
    null = mmcli(*CLASSIFY, SQUARE, "-o", "/dev/null", capture_output=True, timeout=90)
    assert null.returncode == 0 and null.stdout == b""


def test_a_fifo_without_a_reader_and_a_file_format_on_a_stream_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = run_mmcli(*CLASSIFY, SQUARE, "-o", fifo)  # must not hang
    assert result.code == 2 and "nothing is reading" in one_line(result.stderr)
    npy = run_mmcli("embed", SQUARE, "--model", "shapes-clip", "--format", "npy", "-o", "/dev/stdout")
    assert npy.code == 2 and "npy" in one_line(npy.stderr)


# -- 4. unwritable --output, before any weights load ------------------------------------------------------------
@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs fail loudly if they get as far as loading the model."""
    from mmcli.modeling import registry

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(registry, "create_backend", refuse)


def unwritable_outputs(tmp_path: Path) -> list[Path]:
    (tmp_path / "plain-file").write_text("x")
    return [tmp_path / "plain-file" / "out.jsonl", Path("/sys/mmcli-test-out.jsonl"), Path("/proc/out.jsonl")]


def test_an_unwritable_output_is_one_line_exit_2(tmp_path: Path) -> None:
    for output in unwritable_outputs(tmp_path):
        result = run_mmcli(*CLASSIFY, SQUARE, "-o", output)
        assert result.code == 2 and str(output) in one_line(result.stderr)


def test_an_unwritable_output_fails_before_the_model_loads(tmp_path: Path, cli, no_loading) -> None:
    for output in unwritable_outputs(tmp_path):
        result = cli(*CLASSIFY, SQUARE, "-o", output)
        assert result.code == 2 and "--output" in result.stderr, result.stderr


def test_a_second_writer_stops_before_the_model_loads(tmp_path: Path, cli, no_loading) -> None:
    from mmcli.sinks.resume import OutputLock

    out = tmp_path / "out.jsonl"
    held = OutputLock(str(out))
    try:
        result = cli(*CLASSIFY, SQUARE, "-o", out)
        assert result.code == 1 and "being written by another mmcli process" in result.stderr
    finally:
        held.release()


def test_a_run_that_fails_to_load_leaves_no_lock(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmcli.errors import ModelLoadError
    from mmcli.modeling import registry

    def fail(*_: object, **__: object) -> None:
        raise ModelLoadError("no weights here")

    monkeypatch.setattr(registry, "create_backend", fail)
    out = tmp_path / "out.jsonl"
    result = cli(*CLASSIFY, SQUARE, "-o", out)
    assert result.code == 1 and "no weights here" in result.stderr
    assert not (tmp_path / "out.jsonl.lock").exists() and not out.exists()
    monkeypatch.undo()
    assert cli(*CLASSIFY, SQUARE, "-o", out).code == 0  # and the next run is not blocked


def test_compare_still_rewrites_its_output(tmp_path: Path, cli) -> None:
    out = tmp_path / "ranked.jsonl"
    for _ in range(2):
        result = cli("compare", SQUARE, CIRCLE, "--text", "a circle", "--model", "shapes-clip", "-o", out)
        assert result.code == 0, result.stderr
        assert len(out.read_text().splitlines()) == 2
    assert not (tmp_path / "ranked.jsonl.lock").exists()


# -- 5. the reader of stdout goes away --------------------------------------------------------------------------
def test_a_closed_pipe_exits_141_quietly() -> None:
    many = [SQUARE, CIRCLE] * 300  # far more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmcli", *CLASSIFY, *map(str, many)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    try:
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    assert json.loads(first)["input"] == str(SQUARE)
    assert code == 141, err
    assert "error" not in err and "Traceback" not in err


# -- 6. pull's refusals ---------------------------------------------------------------------------------------
def test_pull_refuses_an_empty_directory_as_model_does(tmp_path: Path) -> None:
    empty = tmp_path / "emptydir"
    empty.mkdir()
    pulled = run_mmcli("pull", empty)
    assert pulled.code == 2 and pulled.stdout == b""
    as_model = run_mmcli(*CLASSIFY[:1], SQUARE, "-l", "a,b", "--model", empty)
    assert one_line(pulled.stderr) == one_line(as_model.stderr)


def test_pull_offline_of_an_uncached_repo_is_one_line_exit_1(tmp_path: Path) -> None:
    result = run_mmcli("pull", "nonexistent/model", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert result.code == 1 and "nonexistent/model" in one_line(result.stderr)


def test_pull_refuses_a_revision_of_a_bundled_model() -> None:
    result = run_mmcli("pull", "shapes-clip", "--revision", "v2")
    assert result.code == 2 and "--revision" in one_line(result.stderr) and result.stdout == b""


# -- 7. doctor shows the cache directory in force ------------------------------------------------------------
def test_doctor_shows_the_cache_dir_of_the_config_file(tmp_path: Path, cli, monkeypatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[defaults]\ncache_dir = "{tmp_path / "from-config"}"\n')
    monkeypatch.setenv("MMCLI_CONFIG", str(config))
    monkeypatch.setenv("MMCLI_CACHE_DIR", str(tmp_path / "from-env"))
    embeddings = json.loads(cli("doctor", "-f", "json").stdout)["caches"]["embeddings"]
    assert embeddings["path"] == str(tmp_path / "from-config")
    assert embeddings["from"] == f"config file {config}"
    text = cli("doctor").text
    assert f"{tmp_path / 'from-config'} (not created yet; from config file {config})" in text
    monkeypatch.setenv("MMCLI_CONFIG", os.devnull)
    embeddings = json.loads(cli("doctor", "-f", "json").stdout)["caches"]["embeddings"]
    assert embeddings == {
        "path": str(tmp_path / "from-env"),
        "exists": False,
        "size_bytes": None,
        "from": "MMCLI_CACHE_DIR",
    }


@pytest.mark.parametrize("redirect", ["option", "shell"])
def test_a_full_disk_is_one_line_not_an_internal_error(redirect: str) -> None:
    """Writing to /dev/full fails with ENOSPC, as a full disk does: one line, exit 1, re-run to resume."""
    args = [
        sys.executable,
        "-m",
        "mmcli",
        "classify",
        str(SAMPLES),
        "--model",
        "shapes-clip",
        "--labels",
        "a,b",
    ]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [*args, "-o", "/dev/full"] if redirect == "option" else args,
            stdout=subprocess.DEVNULL if redirect == "option" else full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert (
        stderr.splitlines()[-1]
        == "mmcli: error: cannot write the output: No space left on device; re-run to resume"
    )
    assert "internal error" not in stderr
