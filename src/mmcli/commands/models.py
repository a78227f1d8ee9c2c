"""mmcli models: the aliases in configs/models.toml, or one model's anatomy card (--info)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mmcli.errors import ModelLoadError, UnknownModelError, explain_load_error
from mmcli.modeling import registry
from mmcli.sinks.output import choose_format, open_writer

COLUMNS = ["alias", "family", "checkpoint", "capabilities", "default_for", "description"]


def models(
    info: Annotated[
        str | None,
        typer.Option(
            "--info",
            help="Show one model's anatomy (an alias, hub id or local directory): its encoder, projector, "
            "LLM, output projector and generator with parameter counts, image tokens per image, context "
            "length and dtype. Reads config.json only: no weights are downloaded.",
            show_default=False,
        ),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option("--revision", help="Hub branch, tag or commit (with --info).", show_default=False),
    ] = None,
    format: Annotated[str | None, typer.Option("--format", "-f", help="table | jsonl | json | csv.")] = None,
) -> int:
    """List the model aliases: family, checkpoint and what each can do (no download).

    --model also takes any hub id (org/name) or a local directory holding a saved checkpoint.
    """
    if info is not None:
        return show_info(info, revision, format)
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


def show_info(name: str, revision: str | None, format: str | None) -> int:
    """Print the anatomy card of ``name`` (mmcli.modeling.anatomy): a table, or one JSON object."""
    from mmcli.modeling import anatomy

    fmt = choose_format(format, None, ("table", "json", "jsonl"))
    checkpoint, revision = locate(name, revision)
    config = read_config(name, checkpoint, revision)
    try:
        model = anatomy.meta_model(config)
    except Exception as exc:
        raise ModelLoadError(
            f"{name}: transformers cannot build {config.model_type!r} from its config: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    processor = anatomy.load_processor(Path(checkpoint)) if Path(checkpoint).is_dir() else None
    card = anatomy.card(name, checkpoint, config, model, processor)
    if fmt == "table":
        sys.stdout.write(anatomy.render(card))
    elif fmt == "json":
        import json

        sys.stdout.write(json.dumps(card.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(anatomy.to_json(card) + "\n")
    sys.stdout.flush()
    return 0


def locate(name: str, revision: str | None) -> tuple[str, str | None]:
    """``name`` as a checkpoint: an alias's, a local directory, or a hub id."""
    if name in registry.aliases():
        spec = registry.resolve(name, revision)
        return spec.checkpoint, spec.revision
    path = registry.local_checkpoint(name)
    if path is not None:
        return str(path), None
    if registry._looks_like_hub_id(name):
        return name, revision
    raise UnknownModelError(
        f"unknown model {name!r}",
        f"aliases: {', '.join(sorted(registry.aliases()))}; a hub id (org/name) or a local directory works too",
    )


def read_config(name: str, checkpoint: str, revision: str | None) -> Any:
    """The checkpoint's config: config.json from the directory, or that one file from the hub."""
    from mmcli.modeling.backends.base import quiet_transformers

    quiet_transformers()
    from transformers import AutoConfig

    directory = Path(checkpoint)
    if not directory.is_dir():
        from huggingface_hub import hf_hub_download

        registry.hub_offline()
        try:
            directory = Path(hf_hub_download(checkpoint, "config.json", revision=revision)).parent
        except Exception as exc:
            raise explain_load_error(exc, name) from exc
    registry.read_config_json(directory / "config.json")  # a one-line error for a broken file
    try:
        return AutoConfig.from_pretrained(str(directory))
    except Exception as exc:
        raise explain_load_error(exc, name) from exc
