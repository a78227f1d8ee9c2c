"""mmcli models: the aliases in configs/models.toml."""

from __future__ import annotations

from typing import Annotated

import typer

from mmcli import registry
from mmcli.output import choose_format, open_writer

COLUMNS = ["alias", "family", "checkpoint", "capabilities", "default_for", "description"]


def models(
    format: Annotated[str | None, typer.Option("--format", "-f", help="table | jsonl | json | csv.")] = None,
) -> int:
    """List the model aliases: family, checkpoint and what each can do (no download).

    --model also takes any hub id (org/name) or a local directory holding a saved checkpoint.
    """
    fmt = choose_format(format, None, ("table", "jsonl", "json", "csv"))
    writer = open_writer(fmt, None, COLUMNS)
    defaults = registry.models_table().get("defaults", {})
    for alias, entry in registry.aliases().items():
        family = registry.family_entry(entry["family"])
        writer.write(
            {
                "alias": alias,
                "family": entry["family"],
                "checkpoint": entry["checkpoint"],
                "capabilities": list(family.get("capabilities", [])),
                "default_for": [task for task, name in defaults.items() if name == alias],
                "description": entry.get("description", ""),
            }
        )
    writer.close()
    return 0
