"""mmcli: zero-shot multimodal models from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmcli.version import __version__

__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from mmcli.client import Client


def __getattr__(name: str) -> Any:
    """``from mmcli import Client`` imports the client on first use, so ``import mmcli`` stays light."""
    if name == "Client":
        from mmcli.client import Client

        return Client
    raise AttributeError(f"module 'mmcli' has no attribute {name!r}")
