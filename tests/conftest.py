"""Session fixtures: tiny real checkpoints built offline, sample images, and a CLI runner.

The checkpoints are saved with ``save_pretrained`` and loaded by mmcli through ``--model <dir>``: the same
loading code users hit with hub models.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own embedding cache, no user config file and no mmcli serve (a socket where none
    listens), so no test sees another's, nor a server the developer runs."""
    monkeypatch.setenv("MMCLI_CACHE_DIR", str(tmp_path_factory.mktemp("mmcli-cache")))
    monkeypatch.setenv("MMCLI_SOCKET", str(tmp_path_factory.mktemp("mmcli-run") / "none.sock"))
    config = tmp_path_factory.mktemp("mmcli-config") / "config.toml"
    config.write_text("# empty: the built-in defaults\n")
    monkeypatch.setenv("MMCLI_CONFIG", str(config))


@pytest.fixture(autouse=True)
def pillow_limit_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that decode in this process (mmcli.sources.imaging) set Pillow's global pixel limit: undo it after each."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmcli.testing.contrastive import build_clip

    return build_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmcli.testing.contrastive import build_siglip

    return build_siglip(tmp_path_factory.mktemp("tiny-siglip"))


def random_image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five images of different sizes and formats, one in a subdirectory, one hidden."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    random_image(1, (64, 48)).save(root / "a.jpg", quality=95)
    random_image(2, (40, 80)).save(root / "b.png")
    random_image(3, (32, 32)).save(root / "c.webp")
    random_image(4, (50, 50)).save(root / "sub" / "d.jpg", quality=95)
    random_image(5, (70, 30)).save(root / "sub" / "e.bmp")
    random_image(6, (32, 32)).save(root / ".hidden.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8")

    def jsonl(self) -> list[dict]:
        import json

        return [json.loads(line) for line in self.stdout.decode("utf-8").splitlines() if line.strip()]


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run ``mmcli ARGS`` in this process through the real entry point (``mmcli.cli.main``)."""
    from mmcli.cli import main

    def run(*args: str, stdin: bytes = b"") -> Result:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsysbinary.readouterr()
        return Result(code, captured.out, captured.err.decode("utf-8", "replace"))

    return run


def run_mmcli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> Result:
    """Run mmcli in a real subprocess (exit statuses, the stdout / stderr split)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mmcli", *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


@pytest.fixture(scope="session")
def tiny_blip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmcli.testing.generative import build_blip2

    return build_blip2(tmp_path_factory.mktemp("tiny-blip2"), language="opt")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmcli.testing.generative import build_llava

    return build_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and lose 5-10x when the CPU is shared
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in the generative test modules)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def built_once(
    tmp_path_factory: pytest.TempPathFactory, build: Callable[[str, Path], Path]
) -> Callable[[str], Path]:
    """``kind -> checkpoint``: ``build(kind, a fresh directory)`` on first use, the same directory after."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = build(kind, tmp_path_factory.mktemp(kind))
        return built[kind]

    return get


@pytest.fixture(scope="module")
def backend(checkpoint: Callable[[str], Any]) -> Callable[[str], Any]:
    """A backend per kind (the requesting module's ``checkpoint`` fixture builds it), loaded once through the
    registry, as ``--model <dir>`` loads it."""
    from mmcli.modeling import registry, runtime
    from mmcli.modeling.backends.base import LoadOptions

    loaded: dict[str, Any] = {}

    def get(kind: str) -> Any:
        if kind not in loaded:
            spec = registry.resolve(str(checkpoint(kind)))
            loaded[kind] = registry.create_backend(spec, runtime.resolve("cpu", "fp32"), LoadOptions())
        return loaded[kind]

    return get


def rounded(value: Any) -> Any:
    """Records with floats to 4 places: batching may move the last bits."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value
