"""Expand paths, URLs, directories, globs, ``-`` (paths on stdin) and manifests into items, lazily;
read their bytes (``read_bytes``, downloads in ``mmcli.sources.fetch``) and decode images safely (``decode_image``).

Every failure here becomes an ``Item`` with an ``error`` or an ``InputError``: a bad input is a record,
never a crash of the batch.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from mmcli.errors import InputError
from mmcli.sources.fetch import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, fetch, is_url
from mmcli.sources.limits import DEFAULT_MAX_PIXELS
from mmcli.sources.limits import check_regular_file as check_regular_file

if TYPE_CHECKING:
    from PIL import Image

    from mmcli.sources.decoder import Decoded, Decoders

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "Item",
    "count_inputs",
    "decode_image",
    "expand",
    "is_url",
    "load_image",
    "read_bytes",
    "read_paths",
    "walk",
]


def describe_error(exc: BaseException) -> str:
    """A third-party exception raised while reading or decoding, as a message for the user (imaging.describe;
    imported when needed: expanding and reading inputs never loads Pillow or numpy)."""
    from mmcli.sources.imaging import describe

    return describe(exc)


def __getattr__(name: str) -> object:
    if name == "to_rgb":
        from mmcli.sources.imaging import to_rgb

        return to_rgb
    raise AttributeError(name)


IMAGE_EXTENSIONS = frozenset(
    [
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".apng",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".ico",
        ".avif",
        ".heic",
        ".heif",
        ".jp2",
        ".j2k",
        ".qoi",
        ".psd",
        ".icns",
    ]
)
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Item:
    """One input as the user named it. ``error`` is set when it could not even be found."""

    input: str
    error: str | None = None


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk(directory: str) -> Iterator[str]:
    """Image files under ``directory``, recursively, in sorted order, hidden entries skipped.

    Lazy: the first file comes out before the walk has finished. Symbolic links to directories are not
    followed (no loops). Raises InputError at the first directory that cannot be read.
    """
    for item in _walk_items(directory):
        if item.error:
            raise InputError(item.error)
        yield item.input


def _walk_items(directory: str) -> Iterator[Item]:
    """As ``walk``, but a directory that cannot be read becomes an error item and the walk goes on.

    One directory is listed at a time and only the names worth keeping (images, subdirectories) are held,
    sorted: a flat folder of a million photos costs its names (about 70 MB), not a million DirEntry objects.
    """
    names: list[str] = []
    subdirectories: set[str] = set()
    try:
        with os.scandir(directory) as it:
            for entry in it:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirectories.add(name)
                        names.append(name)
                    elif is_image_name(name) and entry.is_file():
                        names.append(name)
                except OSError:
                    continue
    except OSError as exc:
        yield Item(directory, f"cannot read directory: {exc.strerror or exc}")
        return
    names.sort()
    for name in names:
        path = os.path.join(directory, name)
        if name in subdirectories:
            yield from _walk_items(path)
        else:
            yield Item(path)


def _expand_one(arg: str) -> Iterator[Item]:
    if is_url(arg):
        yield Item(arg)
        return
    if os.path.isdir(arg):
        yield from _walk_items(arg)
        return
    if os.path.lexists(arg):
        yield Item(arg)
        return
    if GLOB_CHARS & set(arg):
        found = False
        for match in iglob(arg):
            if is_image_name(match):
                found = True
                yield Item(match)
        if not found:
            yield Item(arg, "no image files match this pattern")
        return
    yield Item(arg, "no such file or directory")


def iglob(pattern: str) -> Iterator[str]:
    """The files a glob pattern matches, lazily, in the order of a directory walk (names sorted per directory).

    Python's glob semantics (``*``, ``?``, ``[...]`` within a name, ``**`` across directories, wildcards skip
    hidden names), but ``**`` never follows a symbolic link to a directory — no loops — and nothing is collected
    first: ``photos/**/*.jpg`` over a million files gives its first match at once, in flat memory.
    """
    parts = pattern.split(os.sep)
    literal = 0
    while literal < len(parts) - 1 and not GLOB_CHARS & set(parts[literal]):
        literal += 1
    prefix = os.sep.join(parts[:literal]) or (os.sep if literal else "")
    rest = parts[literal:]
    yield from _glob_walk(prefix, rest, frozenset({0}))


def _closure(rest: list[str], states: frozenset[int]) -> frozenset[int]:
    """``**`` also matches no directory at all: a state on ``**`` may move past it for free."""
    out = set(states)
    for s in sorted(states):
        while s < len(rest) and rest[s] == "**":
            s += 1
            out.add(s)
    return frozenset(out)


def _glob_walk(directory: str, rest: list[str], states: frozenset[int]) -> Iterator[str]:
    states = _closure(rest, states)
    try:
        with os.scandir(directory or ".") as it:
            entries = sorted(
                (e.name, e.is_dir(follow_symlinks=False), e.is_dir(), e.is_file()) for e in it
            )  # plain tuples: flat memory per directory
    except OSError:
        return
    for name, real_dir, any_dir, is_file in entries:
        stay: set[int] = set()  # through **: real directories only (no symlink loops)
        follow: set[int] = set()  # through a named segment: a symlink to a directory is fine
        for s in states:
            if s >= len(rest):
                continue
            segment = rest[s]
            if segment == "**":
                if not name.startswith("."):
                    stay.add(s)
            elif (not name.startswith(".") or segment.startswith(".")) and fnmatch.fnmatchcase(name, segment):
                follow.add(s + 1)
        if not stay and not follow:
            continue
        path = os.path.join(directory, name) if directory else name
        if is_file and len(rest) in _closure(rest, frozenset(stay | follow)):
            yield path
        descend = (stay if real_dir else set()) | (follow if any_dir else set())
        if any_dir and descend and not is_file:
            yield from _glob_walk(path, rest, frozenset(descend))


def read_paths(stream: IO[bytes], null: bool) -> Iterator[str]:
    """Paths from a byte stream, one per line (or NUL-separated), decoded as the OS does (odd bytes kept)."""
    if null:
        pending = b""
        while chunk := stream.read(65536):
            pending += chunk
            *parts, pending = pending.split(b"\0")
            for part in parts:
                if part:
                    yield os.fsdecode(part)
        if pending:
            yield os.fsdecode(pending)
        return
    for line in stream:
        line = line.rstrip(b"\n").rstrip(b"\r")
        if line.strip():
            yield os.fsdecode(line)


def expand(args: Iterable[str], stdin: IO[bytes] | None = None, null: bool = False) -> Iterator[Item]:
    """Every input, in order: files and URLs as given, directories walked, globs matched, ``-`` read from
    stdin (where URLs, directories and globs work too)."""
    for arg in args:
        if arg == "-":
            if stdin is None:
                yield Item("-", "no standard input to read paths from")
                continue
            for path in read_paths(stdin, null):
                yield from _expand_one(path)
        else:
            yield from _expand_one(arg)


def count_inputs(args: Sequence[str]) -> int | None:
    """How many items ``expand(args)`` yields, without decoding or opening any file (for a progress total).

    None when ``-`` is among ``args`` (stdin can be read only once) or on any trouble. Safe to run in a
    thread beside ``expand``: it shares no state with it and never raises.
    """
    try:
        if "-" in args:
            return None
        return sum(1 for arg in args for _ in _expand_one(arg))
    except Exception:
        return None


def read_bytes(name: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """The bytes of a URL (downloaded: see ``mmcli.sources.fetch.fetch``) or of a local regular file.

    ``max_bytes`` and ``timeout`` apply to downloads; a local file is limited by the pixel limit when it
    is decoded. Raises InputError with a message fit for the user (the caller names the input).
    """
    if is_url(name):
        return fetch(name, max_bytes, timeout).data
    try:
        check_regular_file(name)
        with open(name, "rb") as f:
            return f.read()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(describe_error(exc)) from exc


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file's bytes to RGB in an isolated decoder process (see ``mmcli.sources.decoder``): EXIF
    orientation applied, first frame of animations, the limits of ``mmcli.sources.imaging`` checked.

    Raises InputError with a message fit for the user.
    """
    if not data:
        raise InputError("empty file")
    from mmcli.sources.decoder import shared

    return shared().decode(data=data, max_pixels=max_pixels).image


def load_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A local file or a URL to an RGB image, decoded in this process's shared decoder process.

    Raises InputError with a message fit for the user (the caller names the file).
    """
    from mmcli.sources.decoder import shared

    return decode_source(open_source(path), shared(), max_pixels).image


@dataclass(frozen=True)
class Source:
    """What a decoder reads for one input: a local regular file by its path (the decoder process reads it,
    nothing is copied through this one), or a download's bytes and the type the server gave them."""

    path: str | None = None
    data: bytes | None = None
    content_type: str | None = None


def open_source(name: str) -> Source:
    """Fetch a URL, or check that a local path is a readable regular file (never a FIFO that would block).

    Raises InputError with a message fit for the user."""
    if is_url(name):
        download = fetch(name)
        return Source(data=download.data, content_type=download.content_type)
    try:
        check_regular_file(name)
    except OSError as exc:
        raise InputError(describe_error(exc)) from exc
    return Source(path=name)


def decode_source(source: Source, decoders: Decoders, max_pixels: int) -> Decoded:
    """Decode in an isolated decoder process; a URL that is not an image says what the server sent."""
    try:
        return decoders.decode(source.path, source.data, max_pixels)
    except InputError as exc:
        kind = source.content_type
        if kind and "not an image" in str(exc) and not kind.startswith("image/"):
            raise InputError(f"{exc} (the server sent {kind})") from exc
        raise
