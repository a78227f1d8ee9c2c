"""Where mmcli keeps things on this machine: the user config file and the embedding cache.

Environment variables win (MMCLI_CONFIG, MMCLI_CACHE_DIR), then the XDG variables, then ~/.config and
~/.cache, as other command-line tools do on Linux and macOS.
"""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable, "")
    return Path(value) if value else Path.home() / fallback


def config_file() -> Path:
    """The user config file (TOML): $MMCLI_CONFIG, else $XDG_CONFIG_HOME/mmcli/config.toml."""
    value = os.environ.get("MMCLI_CONFIG", "")
    return Path(value).expanduser() if value else _xdg("XDG_CONFIG_HOME", ".config") / "mmcli" / "config.toml"


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The embedding cache: --cache-dir, else $MMCLI_CACHE_DIR, else $XDG_CACHE_HOME/mmcli."""
    if explicit:
        return Path(explicit).expanduser()
    value = os.environ.get("MMCLI_CACHE_DIR", "")
    return Path(value).expanduser() if value else _xdg("XDG_CACHE_HOME", ".cache") / "mmcli"
