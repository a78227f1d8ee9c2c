"""The on-disk embedding cache (mmcli.run.cache): round trips, isolation, threads, processes, damaged files."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmcli.run import cache as cache_module
from mmcli.run.cache import FILENAME, EmbeddingCache, describe, digest_bytes

NS = "clip-b32|rev0|fp32|224-center"
SRC = Path(__file__).resolve().parents[1] / "src"


def vector(key: str, dim: int = 512) -> np.ndarray:
    seed = int(hashlib.blake2b(key.encode(), digest_size=8).hexdigest(), 16)
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def keys(n: int, prefix: str = "k") -> list[str]:
    return [digest_bytes(f"{prefix}{i}".encode()) for i in range(n)]


class Warnings(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


def test_digest_bytes_is_blake2b_16_hex() -> None:
    assert digest_bytes(b"abc") == hashlib.blake2b(b"abc", digest_size=16).hexdigest()
    assert len(digest_bytes(b"")) == 32
    assert digest_bytes(b"a") != digest_bytes(b"b")


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, 3.4e38, np.nan], dtype=np.float32)
    special = np.concatenate([special, np.array([0x7FC00123], dtype=np.uint32).view(np.float32)])
    stored = {"a" * 32: vector("a"), "b" * 32: special, "c" * 32: vector("c", dim=3)}
    warnings = Warnings()
    with EmbeddingCache(tmp_path / "deep" / "er", NS, warn=warnings) as cache:
        cache.put_many(stored)
    assert (tmp_path / "deep" / "er" / FILENAME).is_file()
    with EmbeddingCache(tmp_path / "deep" / "er", NS, warn=warnings) as cache:
        got = cache.get_many(list(stored))
    assert set(got) == set(stored)
    for key, value in stored.items():
        assert got[key].dtype == np.float32 and got[key].ndim == 1 and got[key].flags.writeable
        assert got[key].view(np.uint32).tolist() == value.view(np.uint32).tolist()
    assert warnings == []


def test_other_dtypes_are_stored_as_float32_and_2d_is_refused(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path, NS) as cache:
        cache.put_many({"x": np.array([0.5, 1.5], dtype=np.float64), "y": [1, 2, 3]})
        got = cache.get_many(["x", "y"])
        assert got["x"].tolist() == [0.5, 1.5] and got["y"].dtype == np.float32
        with pytest.raises(ValueError, match="1-D"):
            cache.put_many({"z": np.zeros((1, 4), dtype=np.float32)})


def test_namespaces_are_isolated(tmp_path: Path) -> None:
    key = digest_bytes(b"same image bytes")
    a, b = EmbeddingCache(tmp_path, "model-a|fp32"), EmbeddingCache(tmp_path, "model-a|fp16")
    a.put_many({key: vector("a")})
    assert b.get_many([key]) == {}
    b.put_many({key: vector("b")})
    assert np.array_equal(a.get_many([key])[key], vector("a"))
    assert np.array_equal(b.get_many([key])[key], vector("b"))
    a.close()
    b.close()
    assert describe(tmp_path)["namespaces"] == {"model-a|fp16": 1, "model-a|fp32": 1}


def test_hits_and_misses_are_counted(tmp_path: Path) -> None:
    ks = keys(10)
    with EmbeddingCache(tmp_path, NS) as cache:
        cache.put_many({k: vector(k) for k in ks[:4]})
        assert set(cache.get_many([*ks[:6], ks[0]])) == set(ks[:4])  # a repeated digest counts once
        assert (cache.hits, cache.misses) == (4, 2)
        assert cache.get_many([]) == {}
        cache.get_many(ks[6:])
        assert (cache.hits, cache.misses) == (4, 6)


def test_lookups_larger_than_one_query(tmp_path: Path) -> None:
    ks = keys(cache_module.LOOKUP_CHUNK * 2 + 7)
    with EmbeddingCache(tmp_path, NS) as cache:
        cache.put_many({k: vector(k, dim=8) for k in ks})
        got = cache.get_many(ks)
    assert len(got) == len(ks) and np.array_equal(got[ks[-1]], vector(ks[-1], dim=8))


def test_threads_read_while_the_main_thread_writes(tmp_path: Path) -> None:
    ks = keys(640)
    cache = EmbeddingCache(tmp_path, NS)
    errors: list[BaseException] = []
    done = threading.Event()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                wanted = [ks[i] for i in rng.integers(0, len(ks), 16)]
                for key, value in cache.get_many(wanted).items():
                    assert np.array_equal(value, vector(key)), key
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for start in range(0, len(ks), 16):
        cache.put_many({k: vector(k) for k in ks[start : start + 16]})
    done.set()
    for thread in threads:
        thread.join(30)
    assert errors == []
    got = cache.get_many(ks)
    assert len(got) == len(ks) and cache.enabled
    cache.close()


WORKER = textwrap.dedent(
    """
    import hashlib, os, sys, time
    import numpy as np
    from mmcli.run.cache import EmbeddingCache, digest_bytes

    directory, index, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    def vector(key):
        seed = int(hashlib.blake2b(key.encode(), digest_size=8).hexdigest(), 16)
        return np.random.default_rng(seed).standard_normal(512).astype(np.float32)

    warnings = []
    ks = [digest_bytes(f"k{i}".encode()) for i in range(600)]
    mine = ks[index * 200 : index * 200 + 400]  # overlaps the next worker's keys by half
    open(f"{go}-ready-{index}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.002)
    cache = EmbeddingCache(directory, "clip-b32|rev0|fp32|224-center", warn=warnings.append)
    rng = np.random.default_rng(index)
    for start in [*range(0, len(mine), 16), *range(8, len(mine), 16)]:  # every key written twice
        cache.put_many({k: vector(k) for k in mine[start : start + 16]})
        for key, value in cache.get_many([ks[i] for i in rng.integers(0, len(ks), 16)]).items():
            assert np.array_equal(value, vector(key)), key
    cache.close()
    assert not warnings and cache.enabled, warnings
    """
)


def test_processes_write_and_read_overlapping_keys_at_once(tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "cache"), str(i), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go-ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # all three have imported numpy: now they start at once, on a cache not yet made
    go.touch()
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    ks = keys(600, "k")
    with EmbeddingCache(tmp_path / "cache", NS) as cache:
        got = cache.get_many(ks)
    assert len(got) == 600 and all(np.array_equal(got[k], vector(k)) for k in ks)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, NS)
    cache.put_many({"parent": vector("parent")})
    pid = os.fork()
    if pid == 0:  # the child: uses the cache, then leaves at once without running pytest's teardown
        ok = np.array_equal(cache.get_many(["parent"]).get("parent"), vector("parent"))
        cache.put_many({"child": vector("child")})
        os._exit(0 if ok and cache.enabled else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert set(cache.get_many(["parent", "child"])) == {"parent", "child"}
    cache.close()


def test_a_corrupt_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    garbage = b"this is not a database, just garbage " * 200
    (tmp_path / FILENAME).write_bytes(garbage)
    warnings = Warnings()
    with EmbeddingCache(tmp_path, NS, warn=warnings) as cache:
        assert cache.enabled
        cache.put_many({"k": vector("k")})
        assert np.array_equal(cache.get_many(["k"])["k"], vector("k"))
    assert len(warnings) == 1 and "moved it to" in warnings[0]
    moved = list(tmp_path.glob(f"{FILENAME}.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == garbage
    assert describe(tmp_path)["entries"] == 1


def test_a_file_damaged_while_open_is_moved_aside(tmp_path: Path) -> None:
    warnings = Warnings()
    cache = EmbeddingCache(tmp_path, NS, warn=warnings)
    cache.put_many({k: vector(k) for k in keys(50)})
    cache.close()
    cache = EmbeddingCache(tmp_path, NS, warn=warnings)
    data = bytearray((tmp_path / FILENAME).read_bytes())
    page = cache_module.PAGE_SIZE
    data[page : 3 * page] = b"\xa5" * (2 * page)  # wreck the b-tree pages but keep the header
    (tmp_path / FILENAME).write_bytes(bytes(data))
    assert cache.get_many(keys(50)) == {}  # every lookup misses, nothing raises
    cache.put_many({"k": vector("k")})
    assert np.array_equal(cache.get_many(["k"])["k"], vector("k"))
    cache.close()
    assert warnings and "damaged" in warnings[0]
    assert list(tmp_path.glob(f"{FILENAME}.corrupt-*"))


def test_a_database_path_that_cannot_be_opened_disables_the_cache(tmp_path: Path) -> None:
    (tmp_path / FILENAME).mkdir()  # sqlite3 cannot open a directory: "unable to open database file"
    warnings = Warnings()
    cache = EmbeddingCache(tmp_path, NS, warn=warnings)
    cache.put_many({"k": vector("k")})
    assert cache.get_many(["k", "j"]) == {} and not cache.enabled and cache.misses == 2
    cache.close()
    assert len(warnings) == 1 and "disabled" in warnings[0]
    assert describe(tmp_path)["exists"] is False


def test_a_read_only_directory_disables_the_cache(tmp_path: Path) -> None:
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    # root ignores permission bits: /proc/self is an existing directory in which nobody can create files
    directory = Path("/proc/self") if as_root else tmp_path / "ro"
    if not as_root:
        directory.mkdir()
        directory.chmod(0o500)
    warnings = Warnings()
    try:
        cache = EmbeddingCache(directory, NS, warn=warnings)
        cache.put_many({"k": vector("k")})
        assert cache.get_many(["k"]) == {} and not cache.enabled
        assert cache.misses == 1
        cache.close()
    finally:
        if not as_root:
            directory.chmod(0o700)
    assert len(warnings) == 1 and "disabled" in warnings[0]


def test_a_directory_that_is_a_file_disables_the_cache(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    warnings = Warnings()
    cache = EmbeddingCache(tmp_path / "file", NS, warn=warnings)
    cache.put_many({"k": vector("k")})
    assert cache.get_many(["k"]) == {} and not cache.enabled
    assert len(warnings) == 1 and "disabled" in warnings[0]


def test_a_full_disk_disables_the_cache(tmp_path: Path) -> None:
    warnings = Warnings()
    cache = EmbeddingCache(tmp_path, NS, warn=warnings)
    assert cache._conn is not None
    cache._conn.execute("PRAGMA max_page_count = 8")  # SQLITE_FULL: "database or disk is full"
    for start in range(0, 400, 16):
        cache.put_many({k: vector(k) for k in keys(400)[start : start + 16]})
    assert not cache.enabled and cache.get_many(keys(1)) == {}
    assert len(warnings) == 1 and "full" in warnings[0]
    cache.close()


def test_a_lock_held_by_another_connection_is_waited_for(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache_module, "BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(cache_module, "RETRY_DELAYS_S", (0.05,) * 4)
    warnings = Warnings()
    cache = EmbeddingCache(tmp_path, NS, warn=warnings)
    other = sqlite3.connect(tmp_path / FILENAME, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    threading.Timer(0.2, other.rollback).start()
    cache.put_many({"k": vector("k")})  # busy timeout, then back-off retries, then success
    assert "k" in cache.get_many(["k"]) and warnings == []

    other.execute("BEGIN IMMEDIATE")  # now held for longer than every retry: skipped, not fatal
    cache.put_many({"j": vector("j")})
    other.rollback()
    other.close()
    assert cache.enabled and len(warnings) == 1 and "locked" in warnings[0]
    assert set(cache.get_many(["j", "k"])) == {"k"}
    cache.close()


def test_describe_a_missing_and_a_filled_cache(tmp_path: Path) -> None:
    missing = describe(tmp_path / "nothing-here")
    assert missing == {
        "path": str(tmp_path / "nothing-here" / FILENAME),
        "exists": False,
        "bytes": 0,
        "entries": 0,
        "namespaces": {},
    }
    assert not (tmp_path / "nothing-here").exists()
    with EmbeddingCache(tmp_path / "c", "a") as cache:
        cache.put_many({k: vector(k) for k in keys(20)})
    with EmbeddingCache(tmp_path / "c", "b") as cache:
        cache.put_many({k: vector(k) for k in keys(5)})
    info = describe(tmp_path / "c")
    assert info["exists"] is True and isinstance(info["bytes"], int) and info["bytes"] > 25 * 2048
    assert info["entries"] == 25 and info["namespaces"] == {"a": 20, "b": 5}
    assert "error" not in info
