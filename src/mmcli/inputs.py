"""Expand paths, directories, globs and ``-`` (paths on stdin) into items, lazily; decode images safely.

Every failure here becomes an ``Item`` with an ``error`` or an ``InputError``: a bad input is a record,
never a crash of the batch.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mmcli.errors import InputError
from mmcli.pipeline import DEFAULT_MAX_PIXELS

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
    ]
)
GLOB_CHARS = frozenset("*?[")

# mmcli checks the pixel count itself (see load_image), with a limit the user can raise.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


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
    followed (no loops).
    """
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"cannot read directory: {exc.strerror or exc}") from exc
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = os.path.join(directory, entry.name)
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from walk(path)
            elif entry.is_file() and is_image_name(entry.name):
                yield path
        except InputError:
            raise
        except OSError:
            continue


def _expand_one(arg: str) -> Iterator[Item]:
    if os.path.isdir(arg):
        try:
            for path in walk(arg):
                yield Item(path)
        except InputError as exc:
            yield Item(arg, str(exc))
        return
    if os.path.lexists(arg):
        yield Item(arg)
        return
    if GLOB_CHARS & set(arg):
        matches = sorted(glob.iglob(arg, recursive=True))
        found = False
        for match in matches:
            if os.path.isdir(match):
                continue
            if is_image_name(match):
                found = True
                yield Item(match)
        if not found:
            yield Item(arg, "no image files match this pattern")
        return
    yield Item(arg, "no such file or directory")


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
    """Every input, in order: files as given, directories walked, globs matched, ``-`` read from stdin."""
    for arg in args:
        if arg == "-":
            if stdin is None:
                yield Item("-", "no standard input to read paths from")
                continue
            for path in read_paths(stdin, null):
                yield from _expand_one(path)
        else:
            yield from _expand_one(arg)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit and float scaled, transparency composited on white."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0
        elif mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return im.convert("RGB")
    return im


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file or directory"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied (unreadable)"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    text = str(exc)
    if "truncated" in text.lower():
        return "truncated image (the file ends early)"
    if isinstance(exc, OSError):
        return f"cannot read image: {exc.strerror or text or type(exc).__name__}"
    return f"corrupt image: {text or type(exc).__name__}"


def load_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image to RGB, EXIF orientation applied, first frame of animations.

    Raises InputError with a message fit for the user (the caller names the file).
    """
    try:
        if os.path.getsize(path) == 0:
            raise InputError("empty file")
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise InputError(
                    f"{width}x{height} = {width * height:,} pixels is over the limit of "
                    f"{max_pixels:,} (a decompression bomb?); raise it with --max-pixels"
                )
            if width == 0 or height == 0:
                raise InputError("image has no pixels")
            im.seek(0)
            im.load()
            oriented = ImageOps.exif_transpose(im) or im
            rgb = to_rgb(oriented)
            return rgb.copy() if rgb is im else rgb  # closing ``im`` invalidates it
    except InputError:
        raise
    except Exception as exc:
        raise InputError(_describe(exc)) from exc
