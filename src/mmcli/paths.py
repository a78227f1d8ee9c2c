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


def cache_dir_in_force(configured: str | None = None) -> tuple[Path, str]:
    """The embedding cache a run uses without --cache-dir, and what chose it: "config" (the config
    file's [defaults] cache_dir, given as ``configured``; it fills --cache-dir, so it wins over the
    environment), "MMCLI_CACHE_DIR", "XDG_CACHE_HOME" or "default"."""
    if configured:
        return cache_dir(configured), "config"
    for variable in ("MMCLI_CACHE_DIR", "XDG_CACHE_HOME"):
        if os.environ.get(variable, ""):
            return cache_dir(), variable
    return cache_dir(), "default"
