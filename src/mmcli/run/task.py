"""What one subcommand computes (``Task``), and the small pieces of a run that every engine shares: an
input on its way through the run (``Outcome``), error records, resume keys, the embedding cache's namespace.

Below the Job and the engines: the local Job (``run.pipeline``), the Ray engine and the client of a running
``mmcli serve`` all run a Task; none of them is needed to define one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mmcli.sinks.records import Record

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Backend, Batch
    from mmcli.modeling.runtime import Runtime
    from mmcli.modeling.spec import ModelSpec
    from mmcli.modeling.views import View
    from mmcli.sources.inputs import Item


@dataclass
class Outcome:
    """One input on its way through the run: its resume keys (one per record), then its result (an
    embedding row, a caption, ...) or the reason it failed."""

    item: Item
    keys: list[str] = field(default_factory=list)
    value: Any = None
    error: str | None = None
    digest: str | None = None  # content hash, when the embedding cache is in use
    cached: bool = False
    warning: str | None = None  # what the decoder said about the file (libtiff, Pillow), one short line
    thumbnail: bytes | None = None  # a small JPEG of the decoded pixels, for --report
    before: list[str] = field(default_factory=list)  # keys of skipped inputs just before this one


class Task:
    """What one subcommand computes. Plain data (labels, prompts, options), so the Ray engine can ship it
    to its workers; the model is passed in, never stored here."""

    name: ClassVar[str]
    columns: ClassVar[list[str]]
    table_columns: ClassVar[list[str]]
    formats: ClassVar[tuple[str, ...]] = ("table", "jsonl", "json", "csv", "parquet")
    embeds_images: ClassVar[bool] = False  # values are image embeddings: the cache applies
    needs: frozenset[str] = frozenset()
    model: str = ""  # the label records carry, set by Job
    client_only: ClassVar[tuple[str, ...]] = ()  # fields that never travel to a server (sidecar writers)
    view: View | None = None  # --view / --tta of a contrastive task (views.py); None: the model's own
    one_vector: ClassVar[bool] = False  # one embedding per image, whatever the view (embed)

    def options_key(self) -> dict[str, Any]:
        """The options that change this task's records: part of every resume key."""
        return {}

    def parts(self) -> list[str]:
        """One name per record an input yields (vqa: its questions)."""
        return [""]

    def prepare(self, backend: Backend) -> None:
        """Once per process, after the model loaded (encode the labels, ...)."""

    def preprocess(self, backend: Backend, images: list[Any]) -> Batch:
        """Decoded images -> model inputs, in a loader thread (or a server's): the one place, for every
        engine, where the view decides what the model sees."""
        if self.view is None:
            return backend.preprocess(images)
        from mmcli.modeling import views

        return views.preprocess(self.view, backend, images)

    def encode(self, backend: Backend, batch: Batch) -> list[Any]:
        """One value per image of a collated batch of an ``embeds_images`` task (a view's several pictures
        per image are split back and packed, or averaged for ``one_vector``)."""
        if self.view is None:
            return list(backend.encode_images(batch))
        from mmcli.modeling import views

        values = views.encode(backend, batch)
        return [views.one_vector(v) for v in values] if self.one_vector and self.view.multi else values

    def cache_tag(self) -> list[Any] | None:
        """What, besides the model, decides a cached value (the view); None: the model's own view."""
        return None if self.view is None else self.view.cache_tag(self.one_vector)

    def compute(self, backend: Backend, batch: Batch, n: int) -> Sequence[Any]:
        """One value per image of a collated batch (unless ``embeds_images``)."""
        raise NotImplementedError

    def records(self, done: list[Outcome]) -> list[list[Record]]:
        """For each successful outcome, its records: one per part, in ``parts()`` order."""
        raise NotImplementedError

    def leading(self, backend: Backend) -> list[Record]:
        """Records that belong to no image (embed --text), written first."""
        return []

    def deliver(self, out: Outcome, records: list[Record]) -> list[Record]:
        """What is done where the output is written, with an input's records before they are written
        (caption's sidecar files): in the client's process, whoever computed the records."""
        return records

    def restored(self) -> None:
        """Rebuilt from JSON on a server (``server.wire``): set up what ``client_only`` left behind."""


def error_record(item: Item, error: str) -> Record:
    return {"input": item.input, "error": error}


def cache_namespace(spec: ModelSpec, runtime: Runtime, task: Task | None = None) -> str:
    """What an embedding cache entry is valid for: the weights (retrained ones miss), device type, dtype,
    and the task's view (``Task.cache_tag``; the model's own view keeps the namespace it always had)."""
    fields: list[Any] = [
        spec.checkpoint,
        spec.revision,
        weights_stamp(spec.checkpoint) if spec.is_local else None,
        runtime.device.type,
        runtime.dtype_name,
    ]
    tag = task.cache_tag() if task is not None else None
    return json.dumps(fields if tag is None else [*fields, {"view": tag}])


def weights_stamp(directory: str) -> list[tuple[str, int, int]]:
    """Name, size and mtime of a local checkpoint's weight files: retrained weights miss the cache."""
    stamp = []
    try:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.name.endswith((".safetensors", ".bin", ".pt", ".pth")) and entry.is_file():
                st = entry.stat()
                stamp.append((entry.name, st.st_size, st.st_mtime_ns))
    except OSError:
        pass
    return stamp


def keyed(records: list[Record], keys: list[str]) -> Iterator[tuple[str | None, Record]]:
    """An input's records with their resume keys: one key per part, in order; the single error record of a
    many-part input (vqa) takes the first. No keys (output to stdout): None."""
    for i, record in enumerate(records):
        yield (keys[i] if i < len(keys) else (keys[0] if keys else None)), record


def record_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
