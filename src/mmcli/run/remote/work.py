"""What a request to a server is made of, and what it gives back: plain data, shared by the engine, the
socket protocol's two ends, the HTTP face and ``mmcli.Client`` (importing it loads nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmcli.sources import limits as limits_


@dataclass(frozen=True)
class ModelKey:
    """What decides one loaded model: the name and the options that change how it loads."""

    name: str
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    quantize: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    offline: bool = False


@dataclass
class ImageInput:
    name: str  # the input's name, as records show it
    data: bytes | None = None  # the file's bytes
    path: str | None = None  # or a file the server reads itself (an absolute path)
    error: str | None = None  # failed before it reached the server
    content_type: str | None = None  # what the web server said a downloaded file is


@dataclass(frozen=True)
class Limits:
    max_pixels: int = limits_.DEFAULT_MAX_PIXELS
    decode_memory: int = limits_.DEFAULT_DECODE_MEMORY
    decode_timeout: float = limits_.DEFAULT_DECODE_TIMEOUT
    use_cache: bool = True
    cache_dir: str | None = None


@dataclass
class ItemResult:
    records: list[dict[str, Any]] | None = None
    error: str | None = None
    warning: str | None = None


@dataclass
class RunResult:
    items: list[ItemResult]
    label: str
    device: str
    dtype: str
    cache_hits: int = 0
    cache_misses: int = 0
