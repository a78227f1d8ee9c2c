"""Batch jobs end to end: resume after kill -9, signals, the embedding cache, --max-errors, the summary,
streaming over many files, and every kind of bad input in one batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import random_image, run_mmcli


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def same_records(got: list[dict], expected: list[dict]) -> None:
    """Equal records, in the same order; scores within 1e-6 (batches may be split differently)."""
    assert [r["input"] for r in got] == [r["input"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        assert a["key"] == b["key"]
        if "scores" in b:
            assert a["scores"] == {k: pytest.approx(v, abs=1e-6) for k, v in b["scores"].items()}
        if "embedding" in b:
            assert a["embedding"] == pytest.approx(b["embedding"], abs=1e-6)
        assert a.get("error") == b.get("error")


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many")
    for i in range(160):
        random_image(100 + i, (48 + i % 7, 40 + i % 5)).save(root / f"img{i:04d}.png")
    (root / "img0050.png").write_bytes(b"not really a png")  # one error record among them
    return root


def classify_args(images: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "classify",
        str(images),
        "--labels",
        "cat,dog,bird",
        "--model",
        str(model),
        "-o",
        str(out),
        *extra,
    ]


def start(args: list[str], cache: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MMCLI_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-m", "mmcli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"finished before {n} records: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        time.sleep(0.002)
    raise AssertionError("no records in time")


@pytest.fixture(scope="module")
def reference(many_images: Path, tiny_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    cache = tmp_path_factory.mktemp("ref-cache")
    result = run_mmcli(
        *classify_args(many_images, tiny_clip, out, "--batch-size", "4"), env={"MMCLI_CACHE_DIR": str(cache)}
    )
    assert result.code == 3, result.stderr  # one corrupt file
    got = records(out)
    assert len(got) == 160 and sum("error" in r for r in got) == 1
    return got


def test_kill_9_then_the_same_command_gives_exactly_the_uninterrupted_records(
    many_images: Path, tiny_clip: Path, tmp_path: Path, reference: list[dict]
) -> None:
    out = tmp_path / "out.jsonl"
    args = classify_args(many_images, tiny_clip, out, "--batch-size", "1", "--workers", "1")
    proc = start(args, tmp_path / "cache")
    wait_for_lines(out, 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.read_bytes().count(b"\n")
    assert 20 <= partial < 160, "the run should have been killed mid-way"
    with out.open("ab") as f:  # as if the power went off in the middle of a line
        f.write(b'{"input": "half a rec')
    result = run_mmcli(*args, env={"MMCLI_CACHE_DIR": str(tmp_path / "cache")})
    assert result.code == 3, result.stderr
    assert "skipped" in result.stderr
    same_records(records(out), reference)


def test_kill_9_with_a_json_array_output_resumes_from_its_journal(
    many_images: Path, tiny_clip: Path, tmp_path: Path, reference: list[dict]
) -> None:
    out = tmp_path / "out.json"
    journal = tmp_path / "out.json.partial.jsonl"
    args = classify_args(many_images, tiny_clip, out, "--batch-size", "1", "--workers", "1")
    proc = start(args, tmp_path / "cache")
    wait_for_lines(journal, 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and 20 <= len(records(journal)) < 160
    result = run_mmcli(*args, env={"MMCLI_CACHE_DIR": str(tmp_path / "cache")})
    assert result.code == 3, result.stderr
    same_records(json.loads(out.read_text()), reference)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == [
        "out.json"
    ]  # no journal, no lock


def test_sigterm_finishes_the_batch_writes_it_and_exits_143(
    many_images: Path, tiny_clip: Path, tmp_path: Path, reference: list[dict]
) -> None:
    out = tmp_path / "out.jsonl"
    args = classify_args(many_images, tiny_clip, out, "--batch-size", "2", "--workers", "1")
    proc = start(args, tmp_path / "cache")
    wait_for_lines(out, 10, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    stderr = err.decode()
    assert proc.returncode == 143, stderr
    assert "stopped: SIGTERM" in stderr and "done" in stderr  # the summary was printed
    text = out.read_text()
    assert text.endswith("\n")
    partial = records(out)  # every line whole
    assert 10 <= len(partial) < 160
    again = run_mmcli(*args, env={"MMCLI_CACHE_DIR": str(tmp_path / "cache")})
    assert again.code == 3
    same_records(records(out), reference)


def test_sigint_exits_130_with_the_summary(many_images: Path, tiny_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    args = classify_args(many_images, tiny_clip, out, "--batch-size", "2", "--workers", "1")
    proc = start(args, tmp_path / "cache")
    wait_for_lines(out, 6, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "stopped: SIGINT" in err.decode()
    assert all(isinstance(r, dict) for r in records(out))


def test_rerun_skips_everything_and_keeps_the_file(
    many_images: Path, tiny_clip: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    args = classify_args(many_images, tiny_clip, out, "--summary-json", summary)
    assert cli(*args).code == 3
    first = out.read_bytes()
    result = cli(*args)
    assert result.code == 3  # the corrupt input is retried, and fails again
    facts = json.loads(summary.read_text())
    assert facts["skipped"] == 159 and facts["done"] == 0 and facts["failed"] == 1
    assert sorted(out.read_bytes().splitlines()) == sorted(first.splitlines())
    assert len(records(out)) == 160


def test_changed_option_redoes_the_work_and_drops_the_old_records(
    many_images: Path, tiny_clip: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    args = classify_args(many_images, tiny_clip, out, "--summary-json", summary)
    cli(*args)
    cli(*[a if a != "cat,dog,bird" else "cat,dog,fish" for a in args])
    facts = json.loads(summary.read_text())
    assert facts["skipped"] == 0 and facts["done"] == 159
    got = records(out)
    assert len(got) == 160
    assert all(set(r["scores"]) == {"cat", "dog", "fish"} for r in got if "error" not in r)


def test_touched_file_is_redone_and_overwrite_starts_afresh(tmp_path: Path, tiny_clip: Path, cli) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(6):
        random_image(i, (40, 40)).save(images / f"{i}.png")
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    args = classify_args(images, tiny_clip, out, "--summary-json", summary)
    assert cli(*args).code == 0
    random_image(99, (40, 40)).save(images / "3.png")  # new content, size and mtime
    assert cli(*args).code == 0
    facts = json.loads(summary.read_text())
    assert (facts["skipped"], facts["done"]) == (5, 1)
    assert [r["input"] for r in records(out)] == [str(images / f"{i}.png") for i in range(6)]  # input order
    assert cli(*args, "--overwrite").code == 0
    facts = json.loads(summary.read_text())
    assert (facts["skipped"], facts["done"]) == (0, 6)


def test_summary_json_and_line(tmp_path: Path, tiny_clip: Path, image_dir: Path, cli) -> None:
    summary = tmp_path / "s.json"
    result = cli("embed", image_dir, "--model", tiny_clip, "--summary-json", summary, "--device", "cpu")
    facts = json.loads(summary.read_text())
    for key in ("device", "dtype", "done", "skipped", "failed", "items_per_s", "wall_s", "exit_status"):
        assert key in facts
    assert (facts["done"], facts["failed"], facts["device"], facts["dtype"]) == (5, 0, "cpu", "fp32")
    assert facts["exit_status"] == result.code == 0
    assert "embed: 5 done" in result.stderr and "items/s" in result.stderr
    assert cli("embed", image_dir, "--model", tiny_clip, "-q").stderr == ""


def test_max_errors_stops_after_n_failures(tmp_path: Path, tiny_clip: Path, cli) -> None:
    for i in range(8):
        (tmp_path / f"{i}-bad.png").write_bytes(b"junk")
    random_image(1, (30, 30)).save(tmp_path / "9-good.png")
    result = cli("classify", tmp_path, "-l", "a,b", "--model", tiny_clip, "--max-errors", "3", "-b", "2")
    assert result.code == 3
    got = result.jsonl()
    assert sum("error" in r for r in got) == 3 and len(got) <= 4
    assert "--max-errors 3" in result.stderr


# -- the embedding cache ------------------------------------------------------------------------------


def test_cache_hits_on_the_second_run_with_new_labels(
    tmp_path: Path, tiny_clip: Path, image_dir: Path, cli
) -> None:
    summary = tmp_path / "s.json"
    base = ["classify", image_dir, "--model", tiny_clip, "--summary-json", summary]
    first = cli(*base, "-l", "cat,dog").jsonl()
    facts = json.loads(summary.read_text())
    assert (facts["cache_hits"], facts["cache_misses"]) == (0, 5)
    from mmcli.modeling.backends.clip import ClipBackend

    calls = []
    original = ClipBackend.encode_images
    ClipBackend.encode_images = lambda self, batch: calls.append(1) or original(self, batch)  # type: ignore[method-assign]
    try:
        second = cli(*base, "-l", "dog,cat").jsonl()
    finally:
        ClipBackend.encode_images = original  # type: ignore[method-assign]
    facts = json.loads(summary.read_text())
    assert (facts["cache_hits"], facts["cache_misses"]) == (5, 0)
    assert calls == []  # no image went through the vision tower
    for a, b in zip(first, second, strict=True):
        assert a["scores"]["cat"] == pytest.approx(b["scores"]["cat"], abs=1e-6)
    # the cached vectors are the fresh ones, bit for bit
    cached = cli("embed", image_dir, "--model", tiny_clip).jsonl()
    fresh = cli("embed", image_dir, "--model", tiny_clip, "--no-cache").jsonl()
    assert [r["embedding"] for r in cached] == [r["embedding"] for r in fresh]


def test_cache_is_keyed_by_content_and_dtype(tmp_path: Path, tiny_clip: Path, cli) -> None:
    a = tmp_path / "a.png"
    random_image(1, (30, 30)).save(a)
    (tmp_path / "copy-of-a.png").write_bytes(a.read_bytes())
    summary = tmp_path / "s.json"
    cli("embed", a, "--model", tiny_clip, "--summary-json", summary)
    cli("embed", tmp_path / "copy-of-a.png", "--model", tiny_clip, "--summary-json", summary)
    assert json.loads(summary.read_text())["cache_hits"] == 1  # same bytes, other name
    cli("embed", a, "--model", tiny_clip, "--dtype", "bf16", "--summary-json", summary)
    assert json.loads(summary.read_text())["cache_hits"] == 0
    cache_dir = tmp_path / "elsewhere"
    cli("embed", a, "--model", tiny_clip, "--cache-dir", cache_dir)
    assert any(cache_dir.iterdir())


def test_two_processes_share_one_cache(tmp_path: Path, tiny_clip: Path, many_images: Path) -> None:
    cache = tmp_path / "cache"
    outs = [tmp_path / f"{i}.jsonl" for i in range(2)]
    procs = [
        start(["embed", str(many_images), "--model", str(tiny_clip), "-o", str(out), "-b", "8"], cache)
        for out in outs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err.decode()
    a, b = records(outs[0]), records(outs[1])
    assert [r["input"] for r in a] == [r["input"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.get("embedding") == pytest.approx(y.get("embedding"), abs=1e-6)
    third = run_mmcli(
        "embed",
        many_images,
        "--model",
        tiny_clip,
        "--summary-json",
        tmp_path / "s.json",
        env={"MMCLI_CACHE_DIR": str(cache)},
    )
    assert json.loads((tmp_path / "s.json").read_text())["cache_hits"] == 159
    assert third.code == 3


# -- streaming ------------------------------------------------------------------------------------


def test_first_record_arrives_long_before_the_walk_of_10000_files_ends(
    tmp_path: Path, tiny_clip: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    import mmcli.sinks.output
    import mmcli.sources.inputs

    buf = io.BytesIO()
    random_image(1, (16, 16)).save(buf, format="PNG")
    png = buf.getvalue()
    for d in range(100):
        sub = tmp_path / "tree" / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub / f"{i:03d}.png").write_bytes(png)
    walked = {"n": 0, "at_first_record": None}
    original_expand = mmcli.sources.inputs.expand

    def counting_expand(*args, **kwargs):
        for item in original_expand(*args, **kwargs):
            walked["n"] += 1
            yield item

    original_write = mmcli.sinks.output.JsonlWriter.write

    def noting_write(self, record):
        if walked["at_first_record"] is None:
            walked["at_first_record"] = walked["n"]
        original_write(self, record)

    monkeypatch.setattr(mmcli.sources.inputs, "expand", counting_expand)
    monkeypatch.setattr(mmcli.sinks.output.JsonlWriter, "write", noting_write)
    result = cli(
        "embed", tmp_path / "tree", "--model", tiny_clip, "-b", "16", "--format", "jsonl", "--workers", "2"
    )
    assert walked["at_first_record"] is not None
    assert walked["at_first_record"] <= 3 * 16  # the batch in hand and two decoded ahead
    assert result.code == 0 and len(result.jsonl()) == 10_000


# -- bad inputs -----------------------------------------------------------------------------------


def test_every_kind_of_bad_input_in_one_batch(tmp_path: Path, tiny_clip: Path, cli) -> None:
    from PIL import Image

    good = []
    random_image(1, (40, 30)).save(tmp_path / "good.jpg")
    good.append("good.jpg")
    Image.new("CMYK", (20, 20), (0, 50, 100, 0)).save(tmp_path / "cmyk.jpg")
    good.append("cmyk.jpg")
    Image.new("I;16", (20, 20), 40000).save(tmp_path / "sixteen.png")
    good.append("sixteen.png")
    Image.new("P", (20, 20)).save(tmp_path / "palette.gif", transparency=0)
    good.append("palette.gif")
    random_image(2, (20, 20)).save(tmp_path / "name with\nnewline and ünïcode.png")
    good.append("name with\nnewline and ünïcode.png")
    bad = {}
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    bad["truncated.jpg"] = "truncated"
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    bad["corrupt.png"] = ""
    (tmp_path / "empty.png").write_bytes(b"")
    bad["empty.png"] = "empty"
    (tmp_path / "text.jpg").write_text("hello")
    bad["text.jpg"] = "not an image"
    random_image(3, (300, 300)).save(tmp_path / "huge.png")
    bad["huge.png"] = "pixels"
    os.mkfifo(tmp_path / "fifo.png")
    bad["fifo.png"] = "not a regular file"
    bad["missing.png"] = "no such file"
    if os.geteuid() != 0:
        random_image(4, (20, 20)).save(tmp_path / "unreadable.png")
        (tmp_path / "unreadable.png").chmod(0)
        bad["unreadable.png"] = "permission"
    names = sorted(good + list(bad))
    args = [str(tmp_path / n) for n in names] + ["http://127.0.0.1:9/nothing.jpg"]
    result = cli("classify", *args, "-l", "a,b", "--model", tiny_clip, "--max-pixels", "50000", "-b", "32")
    assert result.code == 3
    got = {r["input"]: r for r in result.jsonl()}
    assert sorted(got) == sorted(args)
    for name in good:
        assert "label" in got[str(tmp_path / name)], got[str(tmp_path / name)]
    for name, words in bad.items():
        rec = got[str(tmp_path / name)]
        assert "error" in rec and words in rec["error"], rec
        assert str(tmp_path / name) in result.stderr or name == "name with\nnewline and ünïcode.png"
    assert "error" in got["http://127.0.0.1:9/nothing.jpg"]


# -- progress ---------------------------------------------------------------------------------------


def _run_with_terminal_stderr(args: list[str], tmp_path: Path) -> tuple[int, bytes, str]:
    import pty

    primary, secondary = pty.openpty()
    out_path = tmp_path / "stdout.bin"
    with out_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmcli", *args], stdout=out, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(primary)
    return proc.returncode, out_path.read_bytes(), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_and_none_in_a_pipe(
    tmp_path: Path, tiny_clip: Path, many_images: Path
) -> None:
    args = ["embed", str(many_images), "--model", str(tiny_clip), "-f", "jsonl", "-b", "8"]
    code, out, err = _run_with_terminal_stderr(args, tmp_path)
    assert code == 3
    assert len(out.splitlines()) == 160  # results still go to stdout, untouched
    assert "━" in err and "items/s" in err and "160/160" in err and "1 failed" in err
    assert "embed: 159 done, 1 failed" in err
    quiet_code, _, quiet_err = _run_with_terminal_stderr([*args, "--quiet"], tmp_path)
    assert quiet_code == 3 and "━" not in quiet_err and "done" not in quiet_err
    piped = run_mmcli(*args)
    assert "━" not in piped.stderr and "embed: 159 done, 1 failed" in piped.stderr


# -- every task resumes ---------------------------------------------------------------------------


def test_vqa_resumes_per_question_and_caption_per_image(
    tmp_path: Path, tiny_blip2: Path, image_dir: Path, cli
) -> None:
    out, summary = tmp_path / "vqa.jsonl", tmp_path / "s.json"
    args = [
        "vqa",
        image_dir,
        "--model",
        tiny_blip2,
        "-Q",
        "What colour?",
        "-Q",
        "What shape?",
        "--max-new-tokens",
        "4",
    ]
    assert cli(*args, "-o", out).code == 0
    full = out.read_text().splitlines()
    assert len(full) == 10 and len({json.loads(line)["key"] for line in full}) == 10  # one key per question
    out.write_text("\n".join(full[:3] + full[4:]) + "\n")  # lose the answer to one question of one image
    assert cli(*args, "-o", out, "--summary-json", summary).code == 0
    facts = json.loads(summary.read_text())
    assert (facts["skipped"], facts["done"], facts["records"]) == (4, 1, 1)  # only the missing answer written
    assert out.read_text().splitlines() == full
    caption = tmp_path / "captions.csv"
    cargs = ["caption", image_dir, "--model", tiny_blip2, "--max-new-tokens", "4", "-o", caption]
    assert cli(*cargs).code == 0
    assert cli(*cargs, "--summary-json", summary).code == 0
    assert json.loads(summary.read_text())["skipped"] == 5
    assert cli(*cargs, "--max-new-tokens", "5", "--summary-json", summary).code == 0  # a generation option
    assert json.loads(summary.read_text())["done"] == 5
    assert len(caption.read_text().splitlines()) == 6  # header + one row per image, old rows dropped


def test_a_real_process_exits_fast_with_every_record_on_stdout(tiny_clip: Path, many_images: Path) -> None:
    """The process skips the interpreter's teardown (os._exit) once torch is loaded: stdout is flushed first."""
    result = run_mmcli("embed", many_images, "--model", tiny_clip, "-f", "jsonl")
    lines = result.stdout.splitlines()
    assert result.code == 3 and len(lines) == 160
    assert all(json.loads(line)["input"] for line in lines)
    assert "embed: 159 done, 1 failed" in result.stderr


def test_manifest_as_the_only_input_and_after_the_command_line(
    tmp_path: Path, tiny_clip: Path, image_dir: Path, cli
) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"id,path\n1,{image_dir / 'a.jpg'}\n2,{image_dir / 'b.png'}\n3,{tmp_path / 'gone.png'}\n"
    )
    alone = cli("classify", "--manifest", manifest, "-l", "cat,dog", "--model", tiny_clip, "-f", "jsonl")
    assert alone.code == 3
    assert [r["input"] for r in alone.jsonl()] == [
        str(image_dir / "a.jpg"),
        str(image_dir / "b.png"),
        str(tmp_path / "gone.png"),
    ]
    assert "error" in alone.jsonl()[2]
    both = cli("embed", image_dir / "sub", "--manifest", manifest, "--model", tiny_clip, "-f", "jsonl")
    assert [Path(r["input"]).name for r in both.jsonl()] == ["d.jpg", "e.bmp", "a.jpg", "b.png", "gone.png"]
    none = cli("classify", "-l", "a,b", "--model", tiny_clip)
    assert none.code == 2 and "no inputs" in none.stderr
    assert cli("compare", image_dir, "--text", "x", "--manifest", manifest, "--model", tiny_clip).code == 2


def test_a_second_process_on_the_same_output_stops_at_once(
    tmp_path: Path, tiny_clip: Path, image_dir: Path, cli
) -> None:
    from mmcli.sinks.resume import OutputLock

    out = tmp_path / "out.jsonl"
    held = OutputLock(str(out))  # as another mmcli writing it would
    try:
        result = cli("classify", image_dir, "-l", "a,b", "--model", tiny_clip, "-o", out)
        assert result.code == 1 and "being written by another mmcli process" in result.stderr
        assert f"pid {os.getpid()}" in result.stderr
        assert not out.exists()
    finally:
        held.release()
    (tmp_path / "out.jsonl.lock").write_text("12345")  # left by a process killed with -9: no lock held
    assert cli("classify", image_dir, "-l", "a,b", "--model", tiny_clip, "-o", out).code == 0
    assert len(records(out)) == 5 and not (tmp_path / "out.jsonl.lock").exists()
