"""Options shared by the subcommands, as Annotated aliases, and the CommonOptions they fill."""

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mmcli.errors import UsageError
from mmcli.run.options import CommonOptions
from mmcli.sources.limits import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS, parse_size

COMMON = "Common options"

Inputs = Annotated[
    list[str] | None,
    typer.Argument(
        help="Image files, directories (walked recursively), glob patterns, http(s) URLs, or - to read paths "
        "from stdin (or none, with --manifest).",
        show_default=False,
    ),
]
RequiredInputs = Annotated[
    list[str],
    typer.Argument(
        help="Image files, directories (walked recursively), glob patterns, http(s) URLs, or - to read paths "
        "from stdin.",
        show_default=False,
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="An alias (see `mmcli models`), a hub id, or a local directory.",
        rich_help_panel=COMMON,
    ),
]
Revision = Annotated[
    str | None,
    typer.Option("--revision", help="Hub branch, tag or commit of the model.", rich_help_panel=COMMON),
]
Device = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto | cpu | cuda | cuda:N | mps. A missing device is an error.",
        rich_help_panel=COMMON,
    ),
]
Dtype = Annotated[str, typer.Option("--dtype", help="auto | fp32 | fp16 | bf16.", rich_help_panel=COMMON)]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        help="Images per forward pass \\[default: 16 on CPU, 32 on GPU].",
        rich_help_panel=COMMON,
    ),
]
Format = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="table | jsonl | json | csv | parquet (embed: also npy) \\[default: table on a terminal, else jsonl, or from --output's extension].",
        rich_help_panel=COMMON,
    ),
]
Output = Annotated[
    str | None,  # str, not Path: a Ray job's output may be a URL (s3://bucket/dir/), which Path would mangle
    typer.Option(
        "--output",
        "-o",
        help="Write records to this file instead of stdout.",
        rich_help_panel=COMMON,
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No warnings or summary on stderr.", rich_help_panel=COMMON),
]
Strict = Annotated[
    bool,
    typer.Option("--strict", help="Stop at the first input that fails.", rich_help_panel=COMMON),
]
Offline = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1).",
        rich_help_panel=COMMON,
    ),
]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Allow pickle (.bin) weights; only for checkpoints you trust.",
        rich_help_panel=COMMON,
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Run code shipped in the model's repository.",
        rich_help_panel=COMMON,
    ),
]
MaxPixels = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse images with more pixels (decompression bombs).",
        rich_help_panel=COMMON,
    ),
]
DecodeMemory = Annotated[
    str,
    typer.Option(
        "--decode-memory",
        help="Memory cap of each image decoder process, e.g. 2G or 512M; an image that needs more is an error record.",
        rich_help_panel=COMMON,
    ),
]
DecodeTimeout = Annotated[
    float,
    typer.Option(
        "--decode-timeout",
        min=0.1,
        help="Seconds one image may take to decode before it becomes an error record.",
        rich_help_panel=COMMON,
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=0,
        help="Image decoder processes, each fed by a loader thread; 0: one decoder, no prefetch \\[default: from the CPU count].",
        rich_help_panel=COMMON,
    ),
]
Null = Annotated[
    bool,
    typer.Option(
        "--null",
        "-0",
        help="Paths on stdin are NUL-separated (find -print0).",
        rich_help_panel=COMMON,
    ),
]
DeviceMap = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="auto: spread a big generative model over the GPUs and the CPU (accelerate).",
        rich_help_panel=COMMON,
    ),
]
Quantize = Annotated[
    str | None,
    typer.Option(
        "--quantize",
        help="4bit | 8bit: load a generative model quantised (bitsandbytes, CUDA only).",
        rich_help_panel=COMMON,
    ),
]
BATCH = "Batch jobs"
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Start --output afresh instead of resuming (by default finished inputs are skipped).",
        rich_help_panel=BATCH,
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Image-embedding cache directory \\[default: $MMCLI_CACHE_DIR or ~/.cache/mmcli].",
        rich_help_panel=BATCH,
    ),
]
NoCache = Annotated[
    bool,
    typer.Option("--no-cache", help="Neither read nor write the embedding cache.", rich_help_panel=BATCH),
]
SummaryJson = Annotated[
    Path | None,
    typer.Option(
        "--summary-json", help="Also write the run summary as JSON to this file.", rich_help_panel=BATCH
    ),
]
MaxErrors = Annotated[
    int | None,
    typer.Option("--max-errors", min=1, help="Stop after N failed inputs.", rich_help_panel=BATCH),
]
Manifest = Annotated[
    str | None,
    typer.Option(
        "--manifest",
        help="Inputs from a parquet, jsonl or csv file with a path (or url) column.",
        rich_help_panel=BATCH,
    ),
]
RAY = "Scale out (Ray)"
Engine = Annotated[
    str,
    typer.Option("--engine", help="local | ray (needs mmcli\\[ray]).", rich_help_panel=RAY),
]
RayAddress = Annotated[
    str,
    typer.Option("--ray-address", help="local (start Ray here) | auto | HOST:PORT.", rich_help_panel=RAY),
]
Actors = Annotated[
    int | None,
    typer.Option(
        "--actors", min=1, help="Model replicas \\[default: GPUs, or 1 on CPU].", rich_help_panel=RAY
    ),
]
GpusPerActor = Annotated[
    float,
    typer.Option(
        "--gpus-per-actor", min=0.0, help="GPUs each replica takes (0 on CPU).", rich_help_panel=RAY
    ),
]
NoServer = Annotated[
    bool,
    typer.Option(
        "--no-server",
        help="Load the model in this process even when an mmcli serve is running (config: server = false).",
        rich_help_panel=BATCH,
    ),
]
Report = Annotated[
    Path | None,
    typer.Option(
        "--report",
        help="Also write a self-contained HTML page (thumbnails and results) to this file.",
        show_default=False,
    ),
]
TopK = Annotated[int | None, typer.Option("--top-k", "-k", min=1, help="Keep only the K best.")]

# What a contrastive model sees of each image (mmcli.modeling.views); checked by views.make_view, so eval's and the
# commands' mistakes read the same.
VIEWS = "Views (contrastive models)"
ViewOption = Annotated[
    str | None,
    typer.Option(
        "--view",
        help="model (the checkpoint's processor) | squash (to its square input) | pad (letterboxed: nothing "
        "cut off) | tiles (the model view plus overlapping tiles over the whole image: small objects) "
        "\\[default: model].",
        rich_help_panel=VIEWS,
        show_default=False,
    ),
]
Tiles = Annotated[
    str | None,
    typer.Option(
        "--tiles",
        metavar="RxC",
        help="--view tiles: this grid of tiles \\[default: from the image size, up to 4 across its shorter side].",
        rich_help_panel=VIEWS,
        show_default=False,
    ),
]
Pool = Annotated[
    str | None,
    typer.Option(
        "--pool",
        help="--view tiles: combine the views' scores by mean (likelihoods, the global view weighted as all "
        "the tiles) or max \\[default: mean].",
        rich_help_panel=VIEWS,
        show_default=False,
    ),
]
Tta = Annotated[
    int | None,
    typer.Option(
        "--tta",
        metavar="N",
        help="Test-time augmentation: score N views per image (the image and N-1 mirrored, shifted, scaled "
        "crops) \\[default: 1, off].",
        rich_help_panel=VIEWS,
        show_default=False,
    ),
]
TtaCombine = Annotated[
    str | None,
    typer.Option(
        "--tta-combine",
        help="zero (the most confident tenth of the views vote; ZERO, NeurIPS 2024) | mean (average the "
        "views' probabilities) \\[default: zero].",
        rich_help_panel=VIEWS,
        show_default=False,
    ),
]


_COMMON: list[tuple[str, object, object]] = [
    ("model", Model, None),
    ("revision", Revision, None),
    ("device", Device, "auto"),
    ("dtype", Dtype, "auto"),
    ("batch_size", BatchSize, None),
    ("format", Format, None),
    ("output", Output, None),
    ("quiet", Quiet, False),
    ("strict", Strict, False),
    ("offline", Offline, False),
    ("allow_pickle", AllowPickle, False),
    ("trust_remote_code", TrustRemoteCode, False),
    ("max_pixels", MaxPixels, DEFAULT_MAX_PIXELS),
    ("decode_memory", DecodeMemory, "2G"),
    ("decode_timeout", DecodeTimeout, DEFAULT_DECODE_TIMEOUT),
    ("workers", Workers, None),
    ("null", Null, False),
    ("device_map", DeviceMap, None),
    ("quantize", Quantize, None),
    ("overwrite", Overwrite, False),
    ("cache_dir", CacheDir, None),
    ("no_cache", NoCache, False),
    ("summary_json", SummaryJson, None),
    ("max_errors", MaxErrors, None),
    ("manifest", Manifest, None),
    ("engine", Engine, "local"),
    ("ray_address", RayAddress, "local"),
    ("actors", Actors, None),
    ("gpus_per_actor", GpusPerActor, 0.0),
    ("no_server", NoServer, False),
]


def with_common_options(fn: Callable[..., int]) -> Callable[..., int]:
    """Add the common options to a command's signature; the command receives them as ``common``.

    Typer reads ``__signature__``, so each command lists only its own options and every command
    spells the shared ones the same way.
    """
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)  # the command's annotations, evaluated
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in signature.parameters.values()
        if p.name != "common"
    ]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, annotation, default in _COMMON
    ]
    names = [name for name, _, _ in _COMMON]

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> int:
        from mmcli import userconfig

        try:  # typer >= 0.20 vendors its own click
            from typer._click.core import ParameterSource
            from typer._click.globals import get_current_context
        except ImportError:  # pragma: no cover - older typer with the click package
            from click.core import ParameterSource  # type: ignore[assignment]
            from click.globals import get_current_context  # type: ignore[no-redef]

        values = {name: kwargs.pop(name) for name in names}
        # The user config fills the options left at their defaults; options given on the command line win.
        ctx = get_current_context(silent=True)
        defaults = {name: default for name, _, default in _COMMON}
        if ctx is None:
            given = {name for name in names if values[name] != defaults[name]}
        else:
            unset = (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
            given = {name for name in names if ctx.get_parameter_source(name) not in unset}
        userconfig.apply_defaults(values, given)
        for key in ("output", "cache_dir", "summary_json", "manifest"):
            if values[key] is not None:
                values[key] = str(values[key])
        try:
            values["decode_memory"] = parse_size(str(values["decode_memory"]))
        except ValueError as exc:
            raise UsageError(f"--decode-memory {exc}") from None
        return fn(*args, common=CommonOptions(**values), **kwargs)

    command.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
    return command
