"""Run a checked ``Call`` on an engine (in this process, or ``mmcli serve``'s over its socket) and give the
records the CLI would print: the one path shared by the HTTP API and ``mmcli.Client``.

Images arrive in many shapes (paths, URLs, data: URLs, base64, bytes, PIL images, uploaded files); they
become ``ImageInput``s here, URLs downloaded under ``mmcli.sources.fetch``'s deadline and size cap, several at once.
An input that cannot be read becomes that input's error record, as in the CLI; a malformed reference (bad
base64, a local path over HTTP) is the caller's mistake and a UsageError.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol

from mmcli.errors import InputError, UsageError
from mmcli.server.engine import ImageInput, ItemResult, Limits, ModelKey, RunResult
from mmcli.server.params import Call

FETCH_THREADS = 8


class Runner(Protocol):
    """What runs tasks: ``Engine`` itself, or ``remote.Remote``: a running server."""

    def run(self, key: ModelKey, task: Any, items: list[ImageInput], limits: Limits) -> RunResult: ...

    def leading(self, key: ModelKey, task: Any) -> list[dict[str, Any]]: ...

    def status(self) -> dict[str, Any]: ...


# -- images -------------------------------------------------------------------------------------------------
def image_inputs(
    refs: Sequence[Any], where: str = "images", local: bool = False, max_bytes: int | None = None
) -> list[ImageInput]:
    """ImageInputs for ``refs``, in order. ``local``: paths (files, directories, globs) are allowed, as the
    CLI takes them (mmcli.Client); over HTTP only URLs and uploaded bytes are. URLs are fetched in threads."""
    slots: list[list[ImageInput] | Callable[[], list[ImageInput]]] = []
    for i, ref in enumerate(refs):
        slots.append(_one(ref, f"{where}[{i}]", local, max_bytes))
    pending = [i for i, slot in enumerate(slots) if callable(slot)]
    if pending:
        with ThreadPoolExecutor(min(FETCH_THREADS, len(pending))) as pool:
            done = dict(zip(pending, pool.map(lambda i: slots[i](), pending), strict=True))  # type: ignore[operator]
        slots = [done.get(i, slot) for i, slot in enumerate(slots)]
    return [item for slot in slots for item in slot]  # type: ignore[union-attr]


def _one(
    ref: Any, name: str, local: bool, max_bytes: int | None
) -> list[ImageInput] | Callable[[], list[ImageInput]]:
    """One reference: the finished inputs, or a function that downloads (run in a thread)."""
    from mmcli.sources.fetch import is_url

    if isinstance(ref, ImageInput):
        return [ref]
    if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[1], (bytes, bytearray)):
        return [ImageInput(str(ref[0] or name), data=bytes(ref[1]))]  # an uploaded file
    if isinstance(ref, (bytes, bytearray)):
        return [ImageInput(name, data=bytes(ref))]
    if type(ref).__module__.startswith("PIL.") and hasattr(ref, "save"):
        buffer = io.BytesIO()
        ref.save(buffer, format="PNG")  # lossless: the decoder sees these very pixels
        return [ImageInput(name, data=buffer.getvalue())]
    if isinstance(ref, dict):
        return _from_dict(ref, name, local, max_bytes)
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str):
        raise UsageError(
            f"{name}: an image is a URL, a data: URL or {{name, base64}}, not {type(ref).__name__}"
        )
    if ref.startswith("data:"):
        return [ImageInput(name, data=data_url(ref, name))]
    if is_url(ref):
        return lambda: [download(ref, max_bytes)]
    if not local:
        raise UsageError(
            f"{name}: {ref[:60]!r} is not a URL; send the file itself (multipart, a data: URL or "
            '{"name", "base64"}): the server reads no local paths'
        )
    return lambda: local_inputs(ref)


def _from_dict(
    ref: dict[str, Any], name: str, local: bool, max_bytes: int | None
) -> list[ImageInput] | Callable[[], list[ImageInput]]:
    unknown = set(ref) - {"name", "base64", "url"}
    if unknown or ("base64" in ref) == ("url" in ref):
        raise UsageError(f'{name}: give {{"name", "base64"}} or {{"url"}}; got the keys {sorted(ref)}')
    given = ref.get("name", name)
    if not isinstance(given, str) or not given:
        raise UsageError(f"{name}: name must be a non-empty string")
    if "url" in ref:
        found = _one(ref["url"], given, local, max_bytes)
        if callable(found):
            return lambda: [replace(item, name=given) for item in found()]
        return [replace(item, name=given) for item in found]
    return [ImageInput(given, data=b64(ref["base64"], name))]


def b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise UsageError(f"{name}: base64 must be a string")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{name}: not valid base64") from None


def data_url(url: str, name: str) -> bytes:
    """``data:image/png;base64,....`` (or percent-encoded) -> the bytes."""
    head, comma, body = url.partition(",")
    if not comma:
        raise UsageError(f"{name}: a data: URL needs a comma before its data")
    if head.lower().endswith(";base64"):
        return b64(body, name)
    return urllib.parse.unquote_to_bytes(body)


def download(url: str, max_bytes: int | None = None) -> ImageInput:
    from mmcli.sources.fetch import DEFAULT_MAX_BYTES, fetch

    try:
        found = fetch(url, max_bytes or DEFAULT_MAX_BYTES)
        return ImageInput(url, data=found.data, content_type=found.content_type)
    except InputError as exc:
        return ImageInput(url, error=str(exc))


def local_inputs(name: str) -> list[ImageInput]:
    """A path as the CLI takes it: a file, a directory (walked) or a glob; the server reads the files."""
    from mmcli.run.remote.offload import read_input
    from mmcli.run.task import Outcome
    from mmcli.sources.inputs import expand

    # as the CLI sends them: the bytes (a URL fetched here), the path of a file too large to copy
    return [read_input(Outcome(item)) for item in expand([name])]


# -- running ------------------------------------------------------------------------------------------------
def model_key(defaults: ModelKey, call: Call) -> ModelKey:
    return replace(defaults, name=call.model, revision=call.revision or defaults.revision)


def call_limits(limits: Limits, call: Call) -> Limits:
    """A request may lower the server's pixel limit, never raise it."""
    if call.max_pixels is None:
        return limits
    if call.max_pixels > limits.max_pixels:
        raise UsageError(f"max_pixels {call.max_pixels} is over this server's limit of {limits.max_pixels}")
    return replace(limits, max_pixels=call.max_pixels)


def item_records(item: ImageInput, result: ItemResult) -> list[dict[str, Any]]:
    """An input's records as the CLI writes them: an error record, or its records with any warning."""
    if result.error is not None or result.records is None:
        return [{"input": item.name, "error": result.error or "no result"}]
    records = [dict(record) for record in result.records]
    if result.warning:
        for record in records:
            record["warning"] = result.warning
    return records


def execute(
    runner: Runner,
    call: Call,
    key: ModelKey,
    limits: Limits,
    images: list[ImageInput],
    against: Sequence[ImageInput] = (),
) -> dict[str, Any]:
    """``{"model", "device", "dtype", "records"}``: the records the CLI prints for this call."""
    limits = call_limits(limits, call)
    if call.command == "compare":
        return _compare(runner, call, key, limits, images, list(against))
    records: list[dict[str, Any]] = []
    where: dict[str, str] = {}
    texts = getattr(call.task, "texts", None)
    if call.command == "embed" and texts:
        records += runner.leading(key, call.task)
    if images:
        results, where = run_items(runner, key, call.task, images, limits)
        for item, done in zip(images, results, strict=True):
            records += item_records(item, done)
    return {**(where or describe(runner, key, call)), "records": records}


def run_items(
    runner: Runner, key: ModelKey, task: Any, items: list[ImageInput], limits: Limits
) -> tuple[list[ItemResult], dict[str, str]]:
    """Each item's result, in order, and where the model ran (empty when nothing ran). Inputs that failed
    before (a download, a missing file) never travel to the engine."""
    todo = [item for item in items if item.error is None]
    if not todo:
        return [ItemResult(error=item.error) for item in items], {}
    result = runner.run(key, task, todo, limits)
    done = iter(result.items)
    results = [ItemResult(error=item.error) if item.error is not None else next(done) for item in items]
    return results, {"model": result.label, "device": result.device, "dtype": result.dtype}


def describe(runner: Runner, key: ModelKey, call: Call) -> dict[str, str]:
    """The model's label, device and dtype when no image ran (embed of texts alone)."""
    found = getattr(runner, "describe", None)
    if found is not None:
        info = found(key)
        return {"model": info["label"], "device": info["device"], "dtype": info["dtype"]}
    for model in runner.status().get("models", []):
        if model.get("label") == call.spec.label:
            return {"model": model["label"], "device": model["device"], "dtype": model["dtype"]}
    return {"model": call.spec.label, "device": "-", "dtype": "-"}


def _compare(
    runner: Runner,
    call: Call,
    key: ModelKey,
    limits: Limits,
    images: list[ImageInput],
    against: list[ImageInput],
) -> dict[str, Any]:
    """Rank with numpy cosine (embeddings are L2-normalised): texts against images, or images against
    ``against``. Failed inputs' error records come first, as the CLI writes them while it embeds."""
    import numpy as np

    from mmcli.commands.embed import Embed

    embed = Embed([], True)
    embed.model = call.spec.label
    errors: list[dict[str, Any]] = []
    where: dict[str, str] = {}

    def vectors(items: list[ImageInput]) -> tuple[list[str], list[list[float]]]:
        results, ran = run_items(runner, key, embed, items, limits)
        where.update(ran)
        names, rows = [], []
        for item, done in zip(items, results, strict=True):
            records = item_records(item, done)
            if "error" in records[0]:
                errors.extend(records)
            else:
                names.append(item.name)
                rows.append(records[0]["embedding"])
        return names, rows

    texts: list[str] = list(getattr(call.task, "texts", []))
    if texts:
        text_task = Embed(texts, False)
        text_task.model = call.spec.label
        queries = [record["embedding"] for record in runner.leading(key, text_task)]
        query_names = texts
        target_names, targets = vectors(images)
    else:
        query_names, queries = vectors(images)
        target_names, targets = vectors(against)
    records = list(errors)
    if queries and targets:
        sims = np.asarray(queries, dtype=np.float32) @ np.asarray(targets, dtype=np.float32).T
        k = len(target_names) if call.top_k is None else min(call.top_k, len(target_names))
        for q, query in enumerate(query_names):
            order = np.argsort(-sims[q], kind="stable")[:k]
            records += [
                {
                    "query": query,
                    "target": target_names[t],
                    "score": float(sims[q, t]),
                    "model": call.spec.label,
                }
                for t in order
            ]
    return {**(where or describe(runner, key, call)), "records": records}
