"""Manifests (parquet, jsonl, csv) streamed into inputs, and count_inputs for a progress total."""

from __future__ import annotations

import json
import os
import sys
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from mmcli.errors import UsageError
from mmcli.sources.inputs import Item, count_inputs, expand
from mmcli.sources.manifest import expand_manifest, read_manifest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write_parquet(path: Path, columns: dict[str, list[object]], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def solid(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (255, 0, 0)).save(path)
    return path


EMPTY = "no path or URL (empty, null or missing)"


def listed(manifest: Path) -> list[str]:
    """What each row became: its input, or "<where>: <error>" for a bad row (every row is one or the other)."""
    prefix = f"{manifest} "
    return [
        f"{item.input[len(prefix) :]}: {item.error}" if item.input.startswith(prefix) else item.input
        for item in expand_manifest(str(manifest))
    ]


# -- the three formats ---------------------------------------------------------------------------------------
def test_parquet(tmp_path: Path) -> None:
    manifest = write_parquet(
        tmp_path / "m.parquet",
        {"id": [1, 2, 3, 4], "path": ["a.png", None, "", "https://example.com/b.jpg"]},
    )
    assert listed(manifest) == [
        str(tmp_path / "a.png"),
        f"row 2: {EMPTY}",
        f"row 3: {EMPTY}",
        "https://example.com/b.jpg",
    ]
    with pytest.raises(UsageError, match="row 2: no path or URL"):
        list(read_manifest(str(manifest)))


def test_parquet_read_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmcli.sources import manifest as module

    monkeypatch.setattr(module, "PARQUET_BATCH_ROWS", 10)
    names = [f"/data/{i:05d}.png" for i in range(95)]
    path = write_parquet(tmp_path / "m.parquet", {"url": names}, row_group_size=20)
    assert list(read_manifest(str(path))) == names


def test_jsonl_and_ndjson(tmp_path: Path) -> None:
    rows: list[object] = [
        {"URL": "/abs/a.png", "label": "cat"},
        {"URL": None},
        {"label": "no input here"},
        {"URL": ""},
        {"URL": "rel/b.png"},
    ]
    for name in ("m.jsonl", "m.NDJSON"):
        manifest = write_jsonl(tmp_path / name, rows)
        assert listed(manifest) == [
            "/abs/a.png",
            f"line 2: {EMPTY}",
            f"line 3: {EMPTY}",
            f"line 4: {EMPTY}",
            str(tmp_path / "rel" / "b.png"),
        ]


def test_jsonl_blank_lines_skipped(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('\n{"path": "/x.png"}\n\n   \n{"path": "/y.png"}')
    assert list(read_manifest(str(tmp_path / "m.jsonl"))) == ["/x.png", "/y.png"]


def test_csv_with_bom_quotes_and_short_rows(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        '\ufeffid, Image ,label\n1,/a.png,cat\n2,,dog\n3\n4,"/with,comma.png",x\n5,"/new\nline.png",y\n',
        encoding="utf-8",
    )
    assert listed(tmp_path / "m.csv") == [
        "/a.png",
        f"line 3: {EMPTY}",
        f"line 4: {EMPTY}",
        "/with,comma.png",
        "/new\nline.png",
    ]


@pytest.mark.parametrize(
    ("columns", "chosen"),
    [
        (["filename", "file", "image", "input", "url", "path"], "path"),
        (["File", "Image"], "Image"),
        (["filename", "url"], "url"),
        (["FILENAME", "other"], "FILENAME"),
    ],
)
def test_column_preference(tmp_path: Path, columns: list[str], chosen: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(",".join(columns) + "\n" + ",".join(f"/{c}.png" for c in columns) + "\n")
    assert list(read_manifest(str(manifest))) == [f"/{chosen}.png"]


# -- relative paths --------------------------------------------------------------------------------------------
def test_relative_paths_resolve_against_the_manifest_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_jsonl(jobs / "m.jsonl", [{"path": "img/a.png"}, {"path": "../b.png"}, {"path": "/abs.png"}])
    monkeypatch.chdir(tmp_path)
    assert list(read_manifest("jobs/m.jsonl")) == [
        os.path.join("jobs", "img", "a.png"),
        os.path.join("jobs", "..", "b.png"),
        "/abs.png",
    ]
    monkeypatch.chdir(jobs)
    assert list(read_manifest("m.jsonl"))[:2] == ["img/a.png", "../b.png"]


# -- expand_manifest ------------------------------------------------------------------------------------------
def test_expand_manifest(tmp_path: Path) -> None:
    solid(tmp_path / "one.png")
    solid(tmp_path / "dir" / "b.png")
    solid(tmp_path / "dir" / "a.jpg")
    (tmp_path / "dir" / "notes.txt").write_text("x")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\none.png\ndir\nmissing.png\nhttps://example.com/c.png\n")
    assert list(expand_manifest(str(manifest))) == [
        Item(str(tmp_path / "one.png")),
        Item(str(tmp_path / "dir" / "a.jpg")),
        Item(str(tmp_path / "dir" / "b.png")),
        Item(str(tmp_path / "missing.png"), "no such file or directory"),
        Item("https://example.com/c.png"),
    ]


def test_bad_jsonl_rows(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('not json\n{"path": "/a.png"}\n[1, 2]\n{"path": {"nested": 1}}\n{"path": "/b.png"}\n')
    assert list(expand_manifest(str(manifest))) == [
        Item(f"{manifest} line 1", "not valid JSON"),
        Item("/a.png", "no such file or directory"),
        Item(f"{manifest} line 3", "not a JSON object"),
        Item(f"{manifest} line 4", "not a path or URL: {'nested': 1}"),
        Item("/b.png", "no such file or directory"),
    ]
    with pytest.raises(UsageError, match="line 1: not valid JSON"):
        list(read_manifest(str(manifest)))


# -- bad manifests fail at once ---------------------------------------------------------------------------------
def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    write_parquet(tmp_path / "m.parquet", {"id": [1], "caption": ["x"]})
    write_jsonl(tmp_path / "m.jsonl", [{"id": 1, "caption": "x"}])
    (tmp_path / "m.csv").write_text("id,caption\n1,x\n")
    for name in ("m.parquet", "m.jsonl", "m.csv"):
        with pytest.raises(UsageError) as info:
            read_manifest(str(tmp_path / name))  # raised by the call, before any iteration
        assert "no input column (columns found: id, caption)" in str(info.value)
        assert "path, url, input, image, file, filename" in str(info.value)
        with pytest.raises(UsageError):
            expand_manifest(str(tmp_path / name))


def test_empty_manifests_give_nothing(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text("")
    (tmp_path / "m.csv").write_text("path\n")
    write_parquet(tmp_path / "m.parquet", {"path": pa.array([], pa.string())})
    for name in ("m.parquet", "m.jsonl", "m.csv"):
        assert list(read_manifest(str(tmp_path / name))) == []


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("a.png\n")
    with pytest.raises(UsageError, match="cannot tell the format"):
        read_manifest(str(tmp_path / "m.txt"))
    with pytest.raises(UsageError, match="manifest not found"):
        read_manifest(str(tmp_path / "nope.csv"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UsageError, match="cannot read manifest"):
        read_manifest(str(tmp_path / "broken.parquet"))


def test_missing_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_parquet(tmp_path / "m.parquet", {"path": ["a.png"]})
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UsageError) as info:
        read_manifest(str(path))
    assert "pip install 'mmcli[parquet]'" in str(info.value)
    write_jsonl(tmp_path / "m.jsonl", [{"path": "a.png"}])
    assert len(list(read_manifest(str(tmp_path / "m.jsonl")))) == 1  # the others need no pyarrow


# -- streaming -------------------------------------------------------------------------------------------------
def test_large_jsonl_manifest_streams(tmp_path: Path) -> None:
    rows = 200_000
    manifest = tmp_path / "big.jsonl"
    with manifest.open("w") as f:
        for i in range(rows):
            f.write(f'{{"id": {i}, "path": "/images/{i:07d}.jpg", "caption": "a photo of thing {i}"}}\n')
    size = manifest.stat().st_size
    assert size > 10_000_000

    tracemalloc.start()
    try:
        values = read_manifest(str(manifest))
        first = next(values)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first == "/images/0000000.jpg"
    assert peak < 1_000_000, peak  # a few pages of the file, never the whole 10 MB
    count = 1 + sum(1 for _ in values)
    assert count == rows


def test_large_parquet_manifest_reads_a_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmcli.sources import manifest as module

    monkeypatch.setattr(module, "PARQUET_BATCH_ROWS", 1000)
    rows = 200_000
    path = write_parquet(
        tmp_path / "big.parquet",
        {"path": [f"/images/{i:07d}.jpg" for i in range(rows)]},
        row_group_size=10_000,
    )
    whole = pq.read_table(path).nbytes  # about 4.6 MB
    before = pa.total_allocated_bytes()
    values = read_manifest(str(path))
    assert next(values) == "/images/0000000.jpg"
    held = pa.total_allocated_bytes() - before
    assert held < whole / 4, (held, whole)  # a row group's worth, never the whole column
    assert 1 + sum(1 for _ in values) == rows


# -- count_inputs ----------------------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    rels = [
        "a.png",
        "b.jpg",
        "sub/c.png",
        "sub/deeper/d.webp",
        ".hidden.png",
        ".hid/e.png",
        "g/x1.png",
        "g/h/y.png",
    ]
    for rel in rels:
        solid(root / rel)
    (root / "notes.txt").write_text("x")
    (root / "g" / "x2.txt").write_text("x")
    (root / "link").symlink_to(root / "sub", target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    return root


def test_count_inputs_equals_expand(tree: Path) -> None:
    cases = [
        [str(tree)],
        [str(tree / "a.png"), str(tree / "notes.txt"), str(tree / "sub")],
        [
            str(tree / "g" / "x*"),
            str(tree / "g" / "**" / "*.png"),
            str(tree / "*.png"),
            str(tree / "nothing*"),
        ],
        [str(tree / "missing.png"), "https://example.com/a.png", str(tree), str(tree)],
        [],
    ]
    for args in cases:
        assert count_inputs(args) == len(list(expand(args))), args
    assert count_inputs([str(tree)]) == 6


def test_count_inputs_with_stdin_or_trouble(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert count_inputs([str(tree), "-"]) is None

    def broken(path: str) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(os, "scandir", broken)
    assert count_inputs([str(tree)]) is None
