"""Isolated decoding: a decoder that crashes, loops, allocates without end or prints from C costs one
error record, never the run; the limits hold on every path (nested bombs, strips, cache hits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mmcli.errors import InputError
from mmcli.sources import imaging
from mmcli.sources.decoder import Decoders
from mmcli.sources.limits import MAX_DECODED_PIXELS, parse_size
from tests import fuzz_corpus

HERE = Path(__file__).parent
ROOT = HERE.parent
PLUGINS = str(HERE / "plugins")


@pytest.fixture
def evil_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoder processes (started after this) import the misbehaving test plugin."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MMCLI_PILLOW_PLUGINS", "pillow_evil")


def evil_file(tmp_path: Path, kind: str) -> str:
    path = tmp_path / f"{kind.lower()}.png"
    path.write_bytes(b"EVIL" + kind.encode().ljust(5) + b"\0" * 64)
    return str(path)


def good_file(tmp_path: Path) -> str:
    path = tmp_path / "good.png"
    fuzz_corpus.picture(1).save(path)
    return str(path)


def test_segfault_is_an_error_and_the_pool_goes_on(tmp_path: Path, evil_plugin: None) -> None:
    with Decoders(1) as decoders:
        with pytest.raises(InputError, match=r"^the decoder crashed: SIGSEGV$"):
            decoders.decode(path=evil_file(tmp_path, "SEGV"))
        assert decoders.decode(path=good_file(tmp_path)).image.size == (48, 40)
        assert decoders.replaced == 1


def test_endless_loop_is_stopped_at_the_time_limit(tmp_path: Path, evil_plugin: None) -> None:
    with Decoders(1, timeout=1.0) as decoders:
        start = time.monotonic()
        with pytest.raises(InputError, match=r"^decoding took longer than 1 s$"):
            decoders.decode(path=evil_file(tmp_path, "LOOP"))
        assert time.monotonic() - start < 5
        assert decoders.decode(path=good_file(tmp_path)).image.size == (48, 40)


def test_endless_allocation_is_stopped_at_the_memory_cap(tmp_path: Path, evil_plugin: None) -> None:
    with Decoders(1, memory=parse_size("768M")) as decoders:
        with pytest.raises(InputError, match=r"^the decoder needed more than 768 MB of memory$"):
            decoders.decode(path=evil_file(tmp_path, "ALLOC"))
        assert decoders.decode(path=good_file(tmp_path)).image.size == (48, 40)


def test_c_library_messages_become_the_warning(tmp_path: Path, evil_plugin: None) -> None:
    with Decoders(1) as decoders:
        decoded = decoders.decode(path=evil_file(tmp_path, "WARN"))
        assert decoded.warning is not None and decoded.warning.startswith("TIFFFetchNormalTag")
        assert decoders.decode(path=good_file(tmp_path)).warning is None  # emptied after each job


def test_python_warnings_become_the_warning(tmp_path: Path) -> None:
    path = tmp_path / "exif.jpg"
    path.write_bytes(fuzz_corpus.corrupt_exif())
    with Decoders(1) as decoders:
        assert "Corrupt EXIF" in str(decoders.decode(path=str(path)).warning)


def test_nested_bomb_is_refused_by_pillows_guard_inside_the_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # in-process decodes of other tests set it
    path = tmp_path / "bomb.icns"
    path.write_bytes(fuzz_corpus.nested_bomb())
    assert Image.open(path).size == (512, 512)  # the outer header looks harmless
    with Decoders(1) as decoders:
        with pytest.raises(InputError, match="image inside the file is over the pixel limit"):
            decoders.decode(path=str(path))
        assert decoders.replaced == 0  # refused, not killed


def test_strip_is_refused_before_any_resize(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    path.write_bytes(fuzz_corpus.strip())
    with Decoders(1) as decoders, pytest.raises(InputError, match=r"100000x1 is more than 50:1"):
        decoders.decode(path=str(path))


def test_big_images_come_back_reduced(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(path)
    with Decoders(1) as decoders:
        image = decoders.decode(path=str(path)).image
    assert image.size == (3000, 2000)
    assert image.width * image.height <= MAX_DECODED_PIXELS
    assert image.getpixel((5, 5)) == (10, 200, 30)


def test_big_jpeg_decodes_at_reduced_scale_with_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (200, 30, 30)).save(path, exif=exif)
    with Decoders(1) as decoders:
        image = decoders.decode(path=str(path)).image
    assert image.height > image.width  # turned upright
    assert image.width * image.height <= MAX_DECODED_PIXELS


def test_psd_decodes(tmp_path: Path) -> None:
    path = tmp_path / "flat.psd"
    path.write_bytes(fuzz_corpus.psd_bytes(Image.new("RGB", (8, 6), (200, 10, 50))))
    with Decoders(1) as decoders:
        assert decoders.decode(path=str(path)).image.getpixel((0, 0)) == (200, 10, 50)


def test_bytes_and_probe(tmp_path: Path) -> None:
    data = Path(good_file(tmp_path)).read_bytes()
    with Decoders(1) as decoders:
        assert decoders.decode(data=data).image.size == (48, 40)
        assert decoders.probe(data=data) == (48, 40)
        with pytest.raises(InputError, match="--max-pixels"):
            decoders.probe(data=data, max_pixels=100)


def test_threads_share_the_pool(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = good_file(tmp_path)
    with Decoders(2) as decoders, ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda _: decoders.decode(path=path).image.size, range(40)))
    assert sizes == [(48, 40)] * 40


def test_in_process_decode_keeps_pillows_guard_on(tmp_path: Path) -> None:
    path = tmp_path / "bomb.icns"
    path.write_bytes(fuzz_corpus.nested_bomb())
    with pytest.raises(InputError, match="pixel limit"):
        imaging.decode(str(path), max_pixels=1_000_000)
    assert Image.MAX_IMAGE_PIXELS == 1_000_000


@pytest.mark.parametrize(("text", "expected"), [("2G", 2 << 30), ("512M", 512 << 20), ("1.5GB", 3 << 29)])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "0", "-1G", "1K"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# -- the whole corpus, through the CLI -------------------------------------------------------------------
def processes() -> dict[int, tuple[str, int, int]]:
    """Every process now: pid -> (state, parent pid, resident bytes), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry)] = (fields[0], int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE"))
    return found


def tree_rss_mb(root: int) -> float:
    """The resident memory of a process and all its descendants now, in MB."""
    table = processes()
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, (_, parent, _) in table.items() if parent == pid and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(table[pid][2] for pid in tree if pid in table) / 2**20


def run_cli(args: list[str], env: dict[str, str], timeout: float = 240) -> tuple[int, bytes, float]:
    """Exit status, stderr and the peak memory of the whole process tree (sampled every 50 ms)."""
    with subprocess.Popen(
        [sys.executable, "-m", "mmcli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    ) as proc:
        import threading

        peak = [0.0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss_mb(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, stderr = proc.communicate(timeout=timeout)
        sampler.join()
    return proc.returncode, stderr, peak[0]


def fuzz_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env["PYTHONPATH"] = os.pathsep.join([PLUGINS, str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["MMCLI_PILLOW_PLUGINS"] = "pillow_evil"
    return env


def test_fuzz_corpus_one_record_per_input_exit_3_bounded(tmp_path: Path) -> None:
    files = fuzz_corpus.build(tmp_path / "corpus")
    out = tmp_path / "out.jsonl"
    start = time.monotonic()
    args = [
        "classify",
        str(tmp_path / "corpus"),
        "--model",
        "shapes-clip",
        "--labels",
        "red circle,blue square",
    ]
    code, raw, peak_mb = run_cli(
        [*args, "-o", str(out), "--decode-timeout", "3", "--decode-memory", "1G", "--workers", "2"],
        fuzz_env(),
    )
    wall = time.monotonic() - start
    stderr = raw.decode()
    assert code == 3, stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in records] == [str(f) for f in files]  # one each, in order
    by_name = {Path(r["input"]).name: r for r in records}
    assert by_name["evil-segv.png"]["error"] == "the decoder crashed: SIGSEGV"
    assert by_name["evil-loop.png"]["error"] == "decoding took longer than 3 s"
    assert by_name["evil-alloc.png"]["error"] == "the decoder needed more than 1 GB of memory"
    assert "pixel limit" in by_name["bomb-nested.icns"]["error"]
    assert "50:1" in by_name["strip-1x100000.png"]["error"]
    assert by_name["evil-warn.png"]["warning"].startswith("TIFFFetchNormalTag")
    assert "label" in by_name["evil-warn.png"]
    assert "Corrupt EXIF" in by_name["exif-corrupt.jpg"]["warning"]
    for ext in fuzz_corpus.FORMATS:
        assert "label" in by_name[f"{ext}-valid.{ext}"], by_name[f"{ext}-valid.{ext}"]
    # Nothing raw on the terminal: every line is mmcli's own, at most one per input.
    lines = stderr.splitlines()
    assert all(line.startswith("mmcli: ") for line in lines), stderr
    assert len(lines) <= len(files) + 2
    # Bounded: mmcli, its decoders and the runaway allocation (capped at 1 GB) together.
    print(f"fuzz run: {len(files)} files, {wall:.1f} s, peak RSS of the process tree {peak_mb:.0f} MB")
    assert peak_mb < 3072


@pytest.mark.parametrize("command", ["classify", "embed", "compare"])
def test_max_pixels_holds_on_an_embedding_cache_hit(tmp_path: Path, command: str) -> None:
    """The first run fills the cache; the second, with a lower --max-pixels, must refuse the same files."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        fuzz_corpus.picture(i, (64, 48)).save(folder / f"p{i}.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", MMCLI_CACHE_DIR=str(tmp_path / "cache"))
    extra = {
        "classify": ["--labels", "red circle,blue square"],
        "embed": [],
        "compare": ["--text", "a circle"],
    }
    args = [sys.executable, "-m", "mmcli", command, str(folder), "--model", "shapes-clip", *extra[command]]
    first = subprocess.run([*args, "-f", "jsonl"], capture_output=True, env=env, timeout=120, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(
        [*args, "-f", "jsonl", "--max-pixels", "1000"], capture_output=True, env=env, timeout=120, cwd=ROOT
    )
    records = [json.loads(line) for line in second.stdout.splitlines()]
    errors = [r for r in records if "error" in r]
    assert len(errors) == 3 and all("--max-pixels" in r["error"] for r in errors), records
    assert second.returncode == 3


def decoder_children() -> set[int]:
    """This process's decoder processes that are still running (not zombies)."""
    found = set()
    for pid, (state, parent, _) in processes().items():
        if parent != os.getpid() or state == "Z":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if b"mmcli.sources.decode_worker" in command:
            found.add(pid)
    return found


def test_no_decoder_outlives_a_run_that_failed_to_load(cli, tmp_path: Path) -> None:
    """In-process runs (tests, the Python API) leave no decoder behind, also when the model cannot load."""
    before = decoder_children()
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "clip"}')  # no weights: the load fails
    result = cli("classify", good_file(tmp_path), "--model", model, "--labels", "a,b")
    assert result.code == 1, result.stderr
    ok = cli("classify", good_file(tmp_path), "--model", "shapes-clip", "--labels", "a,b", "-f", "jsonl")
    assert ok.code == 0, ok.stderr
    time.sleep(0.5)
    assert decoder_children() - before == set()
