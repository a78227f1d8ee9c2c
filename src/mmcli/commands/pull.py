"""mmcli pull: download a checkpoint into the Hugging Face cache ahead of time.

For air-gapped machines and CI caches: ``mmcli pull clip-vit-b32`` once with the network, then
``mmcli classify --offline ...`` anywhere the cache goes. Weights are fetched as safetensors only, unless
--allow-pickle; TensorFlow, Flax and ONNX weights are never fetched (mmcli runs PyTorch).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path
from typing import Annotated, Any

import typer

from mmcli.commands.doctor import human_size
from mmcli.errors import MmcliError, ModelLoadError, UnknownModelError, UsageError, explain_load_error

# Weights of other frameworks: never fetched.
OTHER_FRAMEWORKS = [
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.onnx_data",
    "*.onnx.data",
    "*.tflite",
    "*.ot",
    "*.gguf",
    "*.mlmodel",
    "*.mlpackage/*",
    "tf_model*",
    "flax_model*",
    "rust_model*",
]
# Pickle files run code when loaded: fetched only with --allow-pickle.
PICKLE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "pytorch_model*.index.json"]
SAFETENSORS = "*.safetensors"


def pull(
    model: Annotated[
        str,
        typer.Argument(help="An alias (see `mmcli models`) or a hub id (org/name).", show_default=False),
    ],
    revision: Annotated[
        str | None,
        typer.Option("--revision", help="Hub branch, tag or commit \\[default: the alias's, else main]."),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Also fetch pickle weights (.bin, .pt, .pth, .ckpt); only for checkpoints you trust.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or sizes on stderr.")] = False,
) -> int:
    """Download a model's weights, config and processor files into the Hugging Face cache.

    Prints the local snapshot directory. Afterwards the model runs with --offline (or HF_HUB_OFFLINE=1).
    The cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.

    Example: mmcli pull clip-vit-b32 && mmcli classify photos/ -l cat,dog --offline
    """
    from mmcli import userconfig
    from mmcli.modeling import registry
    from mmcli.run.progress import Reporter

    reporter = Reporter(quiet or bool(userconfig.load().defaults.get("quiet", False)))
    local = _local_checkpoint(model)
    if local is not None:
        if model not in registry.aliases():
            registry.resolve(model)  # a directory that is no saved model: refused as --model refuses it
        if revision is not None:
            raise UsageError(
                f"--revision {revision}: {model} is a local checkpoint ({local}), with no revisions"
            )
        _result(str(local))
        reporter.warn(f"{model} is a local checkpoint ({local}): nothing to download")
        return 0
    checkpoint = model
    if model in registry.aliases():
        spec = registry.resolve(model, revision)
        checkpoint, revision = spec.checkpoint, spec.revision
    elif not registry._looks_like_hub_id(model):
        raise UnknownModelError(
            f"unknown model {model!r}",
            f"aliases: {', '.join(sorted(registry.aliases()))}; or a hub id (org/name)",
        )
    path = download(checkpoint, revision, allow_pickle, reporter)
    _result(path)
    return 0


def _result(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _local_checkpoint(name: str) -> Path | None:
    """The directory an alias or a path names, when it is already on this machine."""
    from mmcli.modeling import registry

    if name in registry.aliases():
        spec = registry.resolve(name)
        # A relative checkpoint of an alias (models/shapes-clip) is relative to the source checkout.
        for candidate in (Path(spec.checkpoint), registry.configs_dir().parent / spec.checkpoint):
            if candidate.is_dir():
                return candidate.resolve()
        return None
    path = Path(name).expanduser()
    return path.resolve() if path.is_dir() else None


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch(name, pattern) for pattern in patterns)


def plan(files: dict[str, int], allow_pickle: bool) -> tuple[list[str], list[str], list[str]]:
    """Split a repo's files into (fetched, skipped, ignore patterns for snapshot_download)."""
    ignore = OTHER_FRAMEWORKS + ([] if allow_pickle else PICKLE)
    fetched = [name for name in files if not matches(name, ignore)]
    skipped = [name for name in files if matches(name, ignore)]
    return fetched, skipped, ignore


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def download(repo_id: str, revision: str | None, allow_pickle: bool, reporter: Any) -> str:
    """Fetch ``repo_id`` at ``revision`` into the hub cache; returns the snapshot directory."""
    from huggingface_hub import HfApi, constants, snapshot_download

    where = f"{repo_id}@{revision}" if revision else repo_id
    if constants.HF_HUB_OFFLINE:
        return _cached(repo_id, revision, allow_pickle, reporter)
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:
        raise _explain(exc, repo_id, revision) from exc
    files = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    fetched, skipped, ignore = plan(files, allow_pickle)
    has_safetensors = any(fnmatch(n, SAFETENSORS) for n in fetched)
    pickled = [n for n in files if matches(n, PICKLE) and not n.endswith(".json")]
    if not has_safetensors and pickled and not allow_pickle:
        raise ModelLoadError(
            f"{repo_id} has only pickle weights ({', '.join(pickled[:3])}); mmcli fetches safetensors only",
            "pass --allow-pickle only if you trust the checkpoint's author",
        )
    if not has_safetensors and not pickled:
        reporter.warn(f"{where} has no PyTorch weights: fetching its other files only")
    reporter.warn(
        f"pulling {where} (commit {str(info.sha)[:12]}): {_files(len(fetched))}, "
        f"{human_size(sum(files[n] for n in fetched))}"
    )
    if skipped:
        hint = "; --allow-pickle fetches pickle weights" if any(n in pickled for n in skipped) else ""
        reporter.warn(
            f"skipping {_files(len(skipped))} ({human_size(sum(files[n] for n in skipped))}): "
            f"{', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''}{hint}"
        )
    try:
        silent = _silent_tqdm() if reporter.quiet else None
        path = snapshot_download(repo_id, revision=revision, ignore_patterns=ignore, tqdm_class=silent)
    except Exception as exc:
        raise _explain(exc, repo_id, revision) from exc
    reporter.warn(f"{where} is in the cache: it runs offline now (--offline or HF_HUB_OFFLINE=1)")
    return str(path)


def _cached(repo_id: str, revision: str | None, allow_pickle: bool, reporter: Any) -> str:
    """HF_HUB_OFFLINE is set: succeed only when the snapshot is already in the cache."""
    from huggingface_hub import snapshot_download

    _, _, ignore = plan({}, allow_pickle)
    try:
        path = snapshot_download(repo_id, revision=revision, ignore_patterns=ignore, local_files_only=True)
    except Exception as exc:
        where = f"{repo_id}@{revision}" if revision else repo_id
        raise ModelLoadError(
            f"{where} is not in the cache and HF_HUB_OFFLINE is set: pull needs the hub (unset HF_HUB_OFFLINE)"
        ) from exc
    reporter.warn(f"HF_HUB_OFFLINE is set: {repo_id} is already in the cache, nothing downloaded")
    return str(path)


def _explain(exc: BaseException, repo_id: str, revision: str | None) -> MmcliError:
    from huggingface_hub import constants

    cls = type(exc).__name__
    if cls == "RevisionNotFoundError":
        return ModelLoadError(
            f"{repo_id} has no revision {revision!r} on the hub",
            "check the branch, tag or commit (the default is main)",
        )
    network = ("ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "RemoteProtocolError")
    if cls in network or isinstance(exc, ConnectionError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else cls
        return ModelLoadError(
            f"could not reach the Hugging Face hub at {constants.ENDPOINT}: {first}",
            "check the network (and HF_ENDPOINT, proxies); pull is the step that needs it",
        )
    if cls == "LocalEntryNotFoundError":  # snapshot_download's wrapping of a lost connection
        return ModelLoadError(
            f"could not reach the Hugging Face hub at {constants.ENDPOINT} to pull {repo_id}",
            "check the network (and HF_ENDPOINT, proxies); pull is the step that needs it",
        )
    return explain_load_error(exc, repo_id)


def _silent_tqdm() -> type:
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent
