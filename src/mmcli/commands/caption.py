"""mmcli caption: one caption per image, batched; optionally a .txt sidecar beside each image."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
from contextlib import suppress
from typing import Annotated, Any

import typer

from mmcli.commands._generate import MaxNewTokens, NumBeams, Sample, Seed, Temperature, TopP, generate_options
from mmcli.commands._options import Inputs, Report, with_common_options
from mmcli.errors import UsageError
from mmcli.run.options import CommonOptions
from mmcli.run.pipeline import Job
from mmcli.run.task import Outcome, Task, error_record
from mmcli.sinks.output import Record

COLUMNS = ["input", "caption", "model", "prompt", "error"]
TABLE_COLUMNS = ["input", "caption"]
SIDECAR_RECORD = ".mmcli-sidecars.jsonl"  # per folder: the sidecars mmcli wrote there (see Sidecars)
_LINK_UNSUPPORTED = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}


def sidecar_path(image: str, extension: str) -> str:
    """``photos/cat.jpg`` -> ``photos/cat.txt``: the convention of dataset-captioning tools."""
    return os.path.splitext(image)[0] + "." + extension.lstrip(".")


def sidecar_extension(value: str) -> str:
    """--sidecar, checked: a file extension that names no image (a sidecar must never replace one)."""
    from PIL import Image

    from mmcli.sources.inputs import IMAGE_EXTENSIONS

    extension = value.strip().lstrip(".")
    if not extension.strip(".") or "/" in extension or os.sep in extension:
        raise UsageError(f"--sidecar {value!r} is not a file extension (say txt)")
    last = os.path.splitext("x." + extension)[1].lower()
    if last in IMAGE_EXTENSIONS or last in Image.registered_extensions():
        raise UsageError(f"--sidecar {value}: {last} is an image extension; sidecars are text (say txt)")
    return extension


class SidecarRefused(Exception):
    """The sidecar's place is taken by a file mmcli may not replace: the input gets an error record."""


class Sidecars:
    """Caption files beside the images, written only where mmcli may.

    A new sidecar is created atomically and never over an existing file (a temporary file hard-linked
    into place). An existing file is replaced only when it is a sidecar mmcli wrote for the same image:
    each folder's SIDECAR_RECORD lists, one JSON line per write, the sidecar's name, its image's name and
    the size and hash of what was written. A file not listed, edited since, or listed for another image
    that is still there (cat.jpg and cat.png both want cat.txt: the first wins) is left alone. Files are
    created with the umask's permissions, as any other file.
    """

    def __init__(self, extension: str) -> None:
        self.extension = extension
        self.known: dict[str, dict[str, dict[str, Any]]] = {}  # folder -> sidecar name -> last entry

    def write(self, image: str, text: str) -> None:
        from mmcli.sources.fetch import is_url

        if is_url(image):
            raise SidecarRefused("a URL has no folder to put its sidecar in")
        path = sidecar_path(image, self.extension)
        folder, name = os.path.split(path)
        folder = folder or "."
        data = (text + "\n").encode("utf-8")
        entries = self._entries(folder)
        replace = self._may_replace(path, entries.get(name), os.path.basename(image))
        entry = {
            "sidecar": name,
            "image": os.path.basename(image),
            "size": len(data),
            "blake2b": _digest(data),
        }
        _append_line(
            os.path.join(folder, SIDECAR_RECORD), json.dumps(entry)
        )  # before the file: never unlisted
        entries[name] = entry
        _put(path, data, replace)

    def _entries(self, folder: str) -> dict[str, dict[str, Any]]:
        key = os.path.abspath(folder)
        if key not in self.known:
            self.known[key] = _read_record(os.path.join(folder, SIDECAR_RECORD))
        return self.known[key]

    def _may_replace(self, path: str, entry: dict[str, Any] | None, image: str) -> bool:
        """False: nothing there. True: mmcli's own sidecar of ``image``. Else SidecarRefused."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if entry is None or not stat.S_ISREG(st.st_mode) or not _holds(path, st, entry):
            raise SidecarRefused(
                f"{path} exists and is not a sidecar mmcli wrote (or it was edited): left as is"
            )
        owner = str(entry.get("image"))
        if owner != image and os.path.lexists(os.path.join(os.path.dirname(path), owner)):
            raise SidecarRefused(f"{path} is already the sidecar of {owner} (same name up to the extension)")
        return True


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _holds(path: str, st: os.stat_result, entry: dict[str, Any]) -> bool:
    """The file still holds exactly what mmcli wrote there."""
    if st.st_size != entry.get("size"):
        return False
    with open(path, "rb") as f:
        return _digest(f.read()) == entry.get("blake2b")


def _read_record(record: str) -> dict[str, dict[str, Any]]:
    """The last entry of each sidecar in a folder's record (unreadable lines skipped); compacted when
    re-runs have made it more than twice as long as it needs to be."""
    entries: dict[str, dict[str, Any]] = {}
    lines = 0
    try:
        with open(record, "rb") as f:
            for line in f:
                lines += 1
                with suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and isinstance(entry.get("sidecar"), str):
                        entries[entry["sidecar"]] = entry
    except FileNotFoundError:
        return entries
    if lines > 2 * len(entries) + 100:
        text = "".join(json.dumps(entry) + "\n" for entry in entries.values())
        _put(record, text.encode("ascii"), replace=True)
    return entries


def _append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies
    with open(fd, "wb") as f:
        f.write(line.encode("ascii") + b"\n")  # one write: appends from two processes do not mix


def _temporary(folder: str, data: bytes) -> str:
    """A new hidden file in ``folder`` holding ``data``, created 0666 less the umask."""
    while True:
        tmp = os.path.join(folder, f".mmcli-{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            with open(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp


def _put(path: str, data: bytes, replace: bool) -> None:
    """Write ``path`` in one step (never half a file): over it when ``replace``, else only if still absent."""
    tmp = _temporary(os.path.dirname(path) or ".", data)
    try:
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # fails if a file appeared meanwhile
        except FileExistsError:
            raise SidecarRefused(f"{path} appeared while mmcli wrote it: left as is") from None
        except OSError as exc:
            if exc.errno not in _LINK_UNSUPPORTED or os.path.lexists(path):
                raise
            os.replace(tmp, path)  # a file system without hard links
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


@with_common_options
def caption(
    inputs: Inputs = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="Prompt (default: the model's caption prompt; BLIP-2: none)."),
    ] = None,
    max_new_tokens: MaxNewTokens = 30,
    num_beams: NumBeams = 1,
    sample: Sample = False,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    seed: Seed = None,
    sidecar: Annotated[
        str | None,
        typer.Option(
            "--sidecar",
            help="Also write each caption beside its image, e.g. txt: cat.jpg -> cat.txt "
            "(never over a file mmcli did not write).",
        ),
    ] = None,
    report: Report = None,
    *,
    common: CommonOptions,
) -> int:
    """Caption images with a generative model (BLIP-2, LLaVA, ...).

    Example: mmcli caption photos/ --model blip2-opt-2.7b --sidecar txt
    """
    if sidecar is not None:
        sidecar = sidecar_extension(sidecar)
    options: Any = generate_options(
        max_new_tokens, num_beams, sample, temperature, top_p, seed, raw_prompts=True
    )
    job = Job(Caption(prompt, options, sidecar), common)
    if report is not None:
        job.attach_report(str(report), "caption")
    return job.execute(inputs)


class Caption(Task):
    name = "caption"
    columns = COLUMNS
    table_columns = TABLE_COLUMNS
    needs = frozenset({"generate"})
    client_only = ("sidecars",)

    def __init__(self, prompt: str | None, options: Any, sidecar: str | None) -> None:
        self.prompt = prompt
        self.options = options
        self.sidecar = sidecar
        self.sidecars = Sidecars(sidecar) if sidecar else None
        self.shown_prompt = prompt

    def options_key(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "generate": dataclasses.asdict(self.options), "sidecar": self.sidecar}

    def prepare(self, backend: Any) -> None:
        if self.prompt is None:
            self.shown_prompt = backend.default_prompt("caption")

    def compute(self, backend: Any, batch: Any, n: int) -> list[str]:
        return list(backend.generate(batch, [self.prompt] * n, self.options))

    def records(self, done: list[Outcome]) -> list[list[Record]]:
        return [
            [{"input": o.item.input, "caption": o.value, "model": self.model, "prompt": self.shown_prompt}]
            for o in done
        ]

    def restored(self) -> None:
        self.sidecars = None  # sidecars are written by the client, beside its images

    def deliver(self, out: Outcome, records: list[Record]) -> list[Record]:
        if self.sidecars is None:
            return records
        try:
            self.sidecars.write(out.item.input, str(records[0]["caption"]))
        except SidecarRefused as exc:
            return [error_record(out.item, f"sidecar not written: {exc}")]
        except OSError as exc:
            return [error_record(out.item, f"cannot write the sidecar: {exc.strerror or exc}")]
        return records
