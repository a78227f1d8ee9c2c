"""Resumable writers, at the writer level (no models): crash, repair, resume, stale records, kill -9.

Each test plays the pipeline: for every record, ``keep`` it when its key is in ``done``, else ``write`` it,
and ``flush`` every few records (a batch). The file after a resumed run must equal the file of one
uninterrupted run: same records, same order, no duplicates.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmcli.errors import UsageError
from mmcli.sinks.output import Writer, ids_path_for, open_writer
from mmcli.sinks.resume import journal_path_for

COLUMNS = ["input", "caption", "score", "embedding", "scores", "error"]
FORMATS = ["jsonl", "csv", "json", "npy", "parquet"]
ERRORS = (3, 7)
ROOT = Path(__file__).resolve().parent.parent


def make(n: int, *, dim: int = 4, tag: str = "k", errors: tuple[int, ...] = ERRORS) -> list[dict[str, Any]]:
    """Records like a task's: a caption with a newline, a score table, an embedding; some errors."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        name = "caf\udce9.jpg" if i == 1 else f"img{i}.jpg"  # odd bytes in a file name
        if i in errors:
            out.append({"input": name, "error": "cannot decode", "key": f"{tag}{i:04d}"})
            continue
        vector = [((i * 31 + j * 17) % 97) / 97 for j in range(dim)]
        out.append(
            {
                "input": name,
                "caption": f'a "photo"\nnumber {i}, with a comma',
                "score": i / 4,
                "embedding": vector,
                "scores": {"cat": 0.25, "dog": 0.75},
                "key": f"{tag}{i:04d}",
            }
        )
    return out


def good_keys(records: list[dict[str, Any]]) -> set[str]:
    return {r["key"] for r in records if "error" not in r}


def play(writer: Writer, records: list[dict[str, Any]], batch: int = 3) -> None:
    for j, record in enumerate(records, 1):
        if record["key"] in writer.done:
            writer.keep(record["key"])
        else:
            writer.write(record)
        if j % batch == 0:
            writer.flush()
    writer.flush()


def run(fmt: str, path: Path, records: list[dict[str, Any]], **kw: Any) -> Writer:
    writer = open_writer(fmt, str(path), COLUMNS, **kw)
    play(writer, records)
    writer.close()
    return writer


def crash(writer: Writer) -> None:
    """The process dies after its last flush: nothing more is written, nothing is closed properly (the
    kernel drops the output's lock with the process)."""
    writer.release()
    del writer
    gc.collect()


def data_file(fmt: str, path: Path) -> Path:
    """Where records land while a run is going: FILE itself, or its journal."""
    return path if fmt in ("jsonl", "csv") else Path(journal_path_for(str(path)))


def read_back(fmt: str, path: Path) -> Any:
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if fmt == "csv":
        with open(path, newline="") as f:
            return list(csv.reader(f))
    if fmt == "json":
        return json.loads(path.read_text())
    if fmt == "npy":
        ids = [json.loads(line) for line in Path(ids_path_for(str(path))).read_text().splitlines()]
        return ids, np.load(path).tolist()
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def reference(fmt: str, tmp_path: Path, records: list[dict[str, Any]]) -> Any:
    ref = tmp_path / "reference" / f"out.{fmt}"
    ref.parent.mkdir(exist_ok=True)
    run(fmt, ref, records)
    return read_back(fmt, ref), ref.read_bytes()


def assert_like_one_run(fmt: str, path: Path, tmp_path: Path, records: list[dict[str, Any]]) -> None:
    expected, expected_bytes = reference(fmt, tmp_path, records)
    assert read_back(fmt, path) == expected
    if fmt != "parquet":
        assert path.read_bytes() == expected_bytes
    assert not Path(journal_path_for(str(path))).exists()
    assert not Path(str(path) + ".tmp").exists()


@pytest.fixture(params=FORMATS)
def fmt(request: pytest.FixtureRequest) -> str:
    if request.param == "parquet":
        pytest.importorskip("pyarrow")
    return str(request.param)


def test_resume_after_a_crash_equals_one_run(fmt, tmp_path):
    records, out = make(12), tmp_path / f"out.{fmt}"
    writer = open_writer(fmt, str(out), COLUMNS)
    assert writer.keyed and writer.done == set()
    play(writer, records[:8])
    crash(writer)
    writer = open_writer(fmt, str(out), COLUMNS)
    assert writer.done == good_keys(records[:8])  # error records are not done: they are retried
    play(writer, records)
    writer.close()
    assert_like_one_run(fmt, out, tmp_path, records)


def test_resume_after_an_incomplete_close(fmt, tmp_path):
    records, out = make(12), tmp_path / f"out.{fmt}"
    writer = open_writer(fmt, str(out), COLUMNS)
    play(writer, records[:5])
    writer.close(complete=False)  # interrupted: Ctrl-C
    writer = open_writer(fmt, str(out), COLUMNS)
    assert writer.done == good_keys(records[:5])
    play(writer, records[:9])
    writer.close(complete=False)  # interrupted again, after redoing the error record
    writer = open_writer(fmt, str(out), COLUMNS)
    assert writer.done == good_keys(records[:9])
    play(writer, records)
    writer.close()
    assert_like_one_run(fmt, out, tmp_path, records)


@pytest.mark.parametrize("cut", [1, 9, "quoted-newline"])
def test_a_half_written_last_record_is_cut_off(fmt, tmp_path, cut):
    records, out = make(12), tmp_path / f"out.{fmt}"
    writer = open_writer(fmt, str(out), COLUMNS)
    play(writer, records[:7])
    crash(writer)
    data = data_file(fmt, out).read_bytes()
    if cut == "quoted-newline":  # inside the last caption, just after its newline (in CSV: open quotes)
        keep = data.rindex(b"number 6")
    else:
        assert isinstance(cut, int)
        keep = len(data) - cut
    data_file(fmt, out).write_bytes(data[:keep])
    writer = open_writer(fmt, str(out), COLUMNS)
    assert writer.done == good_keys(records[:6])  # record 6 was half written
    assert data_file(fmt, out).stat().st_size < keep  # the broken tail is gone
    play(writer, records)
    writer.close()
    assert_like_one_run(fmt, out, tmp_path, records)


def test_garbage_after_the_last_record_is_cut_off(fmt, tmp_path):
    records, out = make(12), tmp_path / f"out.{fmt}"
    writer = open_writer(fmt, str(out), COLUMNS)
    play(writer, records[:6])
    crash(writer)
    with open(data_file(fmt, out), "ab") as f:
        f.write(
            b'{"input": "img8.jpg", "key": "k0008"} trailing\n\x00\x00\xff\xfe garbage "\n{"key": "k0009", "in'
        )
    writer = open_writer(fmt, str(out), COLUMNS)
    assert writer.done == good_keys(records[:6])
    play(writer, records)
    writer.close()
    assert_like_one_run(fmt, out, tmp_path, records)


def test_stale_records_are_dropped_on_a_complete_close_only(fmt, tmp_path):
    first, out = make(10), tmp_path / f"out.{fmt}"
    run(fmt, out, first)
    # Now fewer inputs (2..5), and new ones from other options (other keys).
    second = first[2:6] + make(4, tag="other", errors=(1,))
    writer = open_writer(fmt, str(out), COLUMNS)
    assert writer.done == good_keys(first)
    play(writer, second)
    writer.close(complete=False)
    writer = open_writer(fmt, str(out), COLUMNS)
    assert writer.done == good_keys(first) | good_keys(second)  # nothing dropped yet
    play(writer, second)
    writer.close()
    assert_like_one_run(fmt, out, tmp_path, second)


def test_old_error_records_are_redone_in_their_place(fmt, tmp_path):
    records, out = make(8), tmp_path / f"out.{fmt}"
    run(fmt, out, records)
    fixed = make(8, errors=())  # the bad inputs were repaired
    writer = open_writer(fmt, str(out), COLUMNS)
    assert writer.done == good_keys(records)
    play(writer, fixed)
    writer.close()
    assert_like_one_run(fmt, out, tmp_path, fixed)


def test_a_finished_output_is_left_as_it_is(fmt, tmp_path):
    records, out = make(8, errors=()), tmp_path / f"out.{fmt}"  # error records would be redone
    run(fmt, out, records)
    before = out.stat()
    writer = run(fmt, out, records)
    assert writer.done == good_keys(records)
    after = out.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert not data_file(fmt, out).exists() or fmt in ("jsonl", "csv")


def test_overwrite_starts_afresh(fmt, tmp_path):
    out = tmp_path / f"out.{fmt}"
    run(fmt, out, make(6))
    writer = open_writer(fmt, str(out), COLUMNS)
    play(writer, make(6) + make(3, tag="more"))
    crash(writer)
    records = make(5, tag="new", errors=(0,))
    writer = run(fmt, out, records, overwrite=True)
    assert writer.done == set()
    assert_like_one_run(fmt, out, tmp_path, records)


def test_csv_with_other_columns_is_refused(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("input,label,score,key\na.jpg,cat,0.5,k1\n")
    with pytest.raises(UsageError, match="--overwrite"):
        open_writer("csv", str(out), COLUMNS)
    assert out.read_text() == "input,label,score,key\na.jpg,cat,0.5,k1\n"  # untouched
    assert open_writer("csv", str(out), COLUMNS, overwrite=True).done == set()


FOREIGN = [
    ("jsonl", b"hi\n"),
    ("jsonl", b"hi"),
    ("jsonl", b"\n"),
    ("jsonl", b'{"input": "a.jpg", "label": "cat"}\n{"input": "b.jpg", "key": "k1"}\n'),
    ("json", b'[{"input": "a.jpg", "label": "cat"}]\n'),
    ("json", b'{"input": "a.jpg", "label": "cat"}\n'),
]


@pytest.mark.parametrize(("fmt", "content"), FOREIGN)
def test_a_file_mmcli_did_not_write_is_refused_untouched(fmt, content, tmp_path):
    out = tmp_path / f"out.{fmt}"
    out.write_bytes(content)
    with pytest.raises(UsageError, match="did not create") as refused:
        open_writer(fmt, str(out), COLUMNS)
    assert "--overwrite" in (refused.value.hint or "")
    assert out.read_bytes() == content  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no journal, no lock left behind
    assert open_writer(fmt, str(out), COLUMNS, overwrite=True).done == set()


def test_a_record_cut_before_its_first_newline_is_still_resumed(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"input": "img0.jpg", "ca')  # killed in the middle of the first write
    writer = open_writer("jsonl", str(out), COLUMNS)
    assert writer.done == set()
    play(writer, make(4))
    writer.close()
    assert_like_one_run("jsonl", out, tmp_path, make(4))


def test_csv_file_has_a_key_column_and_quoted_newlines(tmp_path):
    out = tmp_path / "out.csv"
    run("csv", out, make(3))
    rows = read_back("csv", out)
    assert rows[0] == [*COLUMNS, "key"]
    assert rows[1][1] == 'a "photo"\nnumber 0, with a comma' and rows[1][-1] == "k0000"


@pytest.mark.parametrize("stdout_fmt", ["jsonl", "csv", "json"])
def test_stdout_records_carry_no_key(capsysbinary, stdout_fmt):
    for output in (None, "-"):
        writer = open_writer(stdout_fmt, output, ["input", "caption"])
        assert not writer.keyed and writer.done == set()
        writer.write({"input": "a.jpg", "caption": "x", "key": "k1"})
        writer.close()
        text = capsysbinary.readouterr().out.decode()
        assert "k1" not in text and "key" not in text and "a.jpg" in text


def test_parquet_columns_and_types(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    out = tmp_path / "out.parquet"
    records = make(5, dim=3)
    run("parquet", out, records)
    table = pq.read_table(out)
    assert table.column_names == [*COLUMNS, "key"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.schema.field("score").type == pa.float64()
    assert table.schema.field("caption").type == pa.string()
    rows = table.to_pylist()
    assert json.loads(rows[0]["scores"]) == {"cat": 0.25, "dog": 0.75}  # JSON text, like CSV
    assert np.allclose(rows[2]["embedding"], records[2]["embedding"], atol=1e-7)
    assert rows[3]["error"] == "cannot decode" and rows[3]["embedding"] is None
    assert rows[1]["input"] == "caf\\udce9.jpg"  # odd bytes as text, as in CSV


def test_parquet_lists_of_strings_and_empty_lists(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    out = tmp_path / "out.parquet"
    records = [
        {"input": "a.jpg", "labels": [], "key": "a"},
        {"input": "b.jpg", "labels": ["cat", "dog"], "key": "b"},
        {"input": "c.jpg", "error": "bad", "key": "c"},
    ]
    run("parquet", out, records)
    table = pq.read_table(out)
    assert table.schema.field("labels").type == pa.list_(pa.string())
    assert table.column("labels").to_pylist() == [[], ["cat", "dog"], None]
    writer = open_writer("parquet", str(out), COLUMNS)  # read back to resume
    assert writer.done == {"a", "b"}
    play(writer, records)
    writer.close()
    assert pq.read_table(out).equals(table)


def test_parquet_is_written_in_row_groups(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    monkeypatch.setattr("mmcli.sinks.formats.ROW_GROUP", 4)
    out = tmp_path / "out.parquet"
    run("parquet", out, make(10))
    assert pq.ParquetFile(out).num_row_groups == 3


def test_npy_matrix_has_good_rows_only_and_names_them(tmp_path):
    out = tmp_path / "vectors.npy"
    records = make(6)
    run("npy", out, records)
    ids, matrix = read_back("npy", out)
    assert np.load(out).dtype == np.float32
    assert [i["key"] for i in ids] == [r["key"] for r in records if "error" not in r]
    assert all("embedding" not in i for i in ids)
    assert np.allclose(matrix, [r["embedding"] for r in records if "error" not in r])


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(UsageError, match=r"pip install 'mmcli\[parquet\]'"):
        open_writer("parquet", str(tmp_path / "out.parquet"), COLUMNS)


@pytest.mark.parametrize("file_fmt", ["npy", "parquet"])
def test_matrix_and_columnar_formats_need_a_file(file_fmt):
    with pytest.raises(UsageError, match="--output"):
        open_writer(file_fmt, None, COLUMNS)


# -- a real kill -9 ---------------------------------------------------------------------------------
# Records of about 1.4 KB, 8 to a batch: the file object's 8 KiB buffer spills mid-batch, so the kill
# (which lands mid-batch) leaves records past the last flush in the file, and loses others.
KILL_RECORDS, KILL_DIM, KILL_BATCH = 240, 64, 8


def child_main() -> None:
    """Run in a subprocess: write like the pipeline (a flush per batch), say how far it got, until killed."""
    fmt, path = sys.argv[1], sys.argv[2]
    writer = open_writer(fmt, path, COLUMNS)
    for j, record in enumerate(make(KILL_RECORDS, dim=KILL_DIM), 1):
        writer.write(record)
        time.sleep(0.002)  # model time: the kill lands anywhere in a batch
        if j % KILL_BATCH == 0:
            writer.flush()
            print(j, flush=True)
    writer.close()


def test_kill_9_mid_run_then_resume(fmt, tmp_path):
    out = tmp_path / f"out.{fmt}"
    code = "from tests.test_resume_writers import child_main; child_main()"
    child = subprocess.Popen(
        [sys.executable, "-c", code, fmt, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for line in child.stdout:
        if int(line) >= 5 * KILL_BATCH:
            time.sleep(0.011)  # into the next batch
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait(30)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    records = make(KILL_RECORDS, dim=KILL_DIM)
    writer = open_writer(fmt, str(out), COLUMNS)
    done = writer.done
    assert done and done < good_keys(records)
    assert done == good_keys(records[: max(int(k[1:]) for k in done) + 1])  # a prefix, nothing skipped
    play(writer, records, batch=KILL_BATCH)
    writer.close()
    assert_like_one_run(fmt, out, tmp_path, records)
