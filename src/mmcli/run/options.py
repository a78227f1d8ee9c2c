"""The options every subcommand takes (``commands/_options.py`` fills them): plain data, so any layer can
read them and the Ray engine can ship them."""

from __future__ import annotations

from dataclasses import dataclass

from mmcli.sources.limits import DEFAULT_DECODE_MEMORY, DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS


@dataclass
class CommonOptions:
    """The options every subcommand takes (see commands/_options.py)."""

    model: str | None = None
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    format: str | None = None
    output: str | None = None
    quiet: bool = False
    strict: bool = False
    offline: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_memory: int = DEFAULT_DECODE_MEMORY
    decode_timeout: float = DEFAULT_DECODE_TIMEOUT
    workers: int | None = None
    null: bool = False
    device_map: str | None = None
    quantize: str | None = None
    overwrite: bool = False
    cache_dir: str | None = None
    no_cache: bool = False
    summary_json: str | None = None
    max_errors: int | None = None
    manifest: str | None = None
    engine: str = "local"
    ray_address: str = "local"
    actors: int | None = None
    gpus_per_actor: float = 0.0
    no_server: bool = False
