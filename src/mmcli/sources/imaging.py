"""Decode one image file to bounded 8-bit RGB: the code that runs inside the isolated decoder processes.

Imports only Pillow, numpy and mmcli.errors, so a decoder process starts in about a tenth of a second.
Every limit is checked here, in the process that touches the untrusted bytes:

- the pixel count in the header (``max_pixels``, mmcli's own message) and, inside nested decoders (an ICNS
  holding a JPEG 2000, a TIFF's sub-images), Pillow's own bomb guard, which stays on at the same limit;
- the aspect ratio (``MAX_ASPECT``): a 1 x 10,000,000 strip is refused before a processor resizes it to a
  224-pixel short side (2.2 G pixels);
- the decoded size (``MAX_DECODED_PIXELS``): bigger images are reduced by an integer factor (JPEG decodes
  at the reduced scale directly), so what crosses to the model side is at most 4096 x 4096 pixels.

Errors raise ``InputError`` with a message fit for the user; warnings are collected, not printed.
"""

from __future__ import annotations

import math
import warnings
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmcli.errors import InputError
from mmcli.sources.limits import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from mmcli.sources.limits import MAX_ASPECT, MAX_DECODED_PIXELS
from mmcli.sources.limits import check_regular_file as check_regular_file

# Formats never opened: EPS is decoded by running Ghostscript on the file.
UNSAFE_FORMATS = frozenset(["EPS"])
ALPHA_MODES = frozenset(["RGBA", "LA", "PA", "RGBa"])
# Modes Image.reduce accepts; others are converted to RGB first.
REDUCIBLE_MODES = frozenset(["L", "LA", "RGB", "RGBA", "RGBa", "La", "I", "F", "CMYK", "YCbCr"])
# Warnings about mmcli's own conversions, not about the file.
IGNORED_WARNINGS = ("Palette images with Transparency expressed in bytes",)


def describe(exc: BaseException) -> str:
    """A third-party exception raised while reading or decoding, as a message for the user."""
    if isinstance(exc, FileNotFoundError):
        return "no such file or directory"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied (unreadable)"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        limit = f" of {Image.MAX_IMAGE_PIXELS:,}" if Image.MAX_IMAGE_PIXELS else ""
        return f"an image inside the file is over the pixel limit{limit} (a decompression bomb?)"
    text = str(exc)
    if "truncated" in text.lower():
        return "truncated image (the file ends early)"
    if isinstance(exc, OSError):
        return f"cannot read image: {exc.strerror or text or type(exc).__name__}"
    return f"corrupt image: {text or type(exc).__name__}"


def safe_formats() -> list[str]:
    Image.init()  # registers every plugin once; later registrations (HEIF...) are picked up per call
    return [fmt for fmt in Image.ID if fmt not in UNSAFE_FORMATS]


def check_size(width: int, height: int, max_pixels: int) -> None:
    """The limits an image's declared size must meet before any pixel is decoded."""
    if width * height > max_pixels:
        raise InputError(
            f"{width}x{height} = {width * height:,} pixels is over the limit of "
            f"{max_pixels:,} (a decompression bomb?); raise it with --max-pixels"
        )
    if width <= 0 or height <= 0:
        raise InputError("image has no pixels")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InputError(
            f"{width}x{height} is more than {MAX_ASPECT}:1; resized for a model it would be unbounded "
            "(crop or pad it first)"
        )


def probe(source: str | IO[bytes], max_pixels: int) -> tuple[int, int]:
    """Read the header only and check the limits: what an embedding-cache hit still owes the user."""
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(source, formats=safe_formats()) as im:
            check_size(*im.size, max_pixels)
            return im.size
    except (InputError, MemoryError):
        raise
    except Exception as exc:
        raise InputError(describe(exc)) from exc


def decode(source: str | IO[bytes], max_pixels: int) -> tuple[Image.Image, list[str]]:
    """An image file (a path or a file object) as RGB, EXIF orientation applied, first frame of
    animations, at most ``MAX_DECODED_PIXELS``; and the warnings Pillow raised on the way."""
    Image.MAX_IMAGE_PIXELS = None  # the outer header: mmcli's own check, with its own message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source, formats=safe_formats()) as im:
                check_size(*im.size, max_pixels)
                Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's guard, for what nested decoders declare
                rgb = _decode_open(im)
        except (InputError, MemoryError):
            raise
        except Exception as exc:
            raise InputError(describe(exc)) from exc
    notes = [str(w.message) for w in caught if not str(w.message).startswith(IGNORED_WARNINGS)]
    return rgb, notes


def _decode_open(im: Image.Image) -> Image.Image:
    """Decode an opened image (no seek: a fresh image is at its first frame; a PSD's first is frame 1)."""
    width, height = im.size
    factor = reduction(width, height)
    if factor > 1 and im.format == "JPEG":
        im.draft(im.mode, (math.ceil(width / factor), math.ceil(height / factor)))  # DCT scaling
    im.load()
    factor = reduction(*im.size)
    if factor > 1:
        plain = im.mode in REDUCIBLE_MODES and "transparency" not in im.info
        base = im if plain else to_rgb(im)
        oriented = _orient(im, base.reduce(factor))
    else:
        oriented = _orient(im, im)
    rgb = to_rgb(oriented)
    return rgb.copy() if rgb is im else rgb  # closing ``im`` invalidates it


def _orient(original: Image.Image, im: Image.Image) -> Image.Image:
    """EXIF orientation of ``original`` applied to ``im`` (the same picture, maybe reduced)."""
    if im is original:
        return ImageOps.exif_transpose(im) or im
    return _transpose(im, original.getexif().get(0x0112, 1))


def _transpose(im: Image.Image, orientation: int) -> Image.Image:
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return im.transpose(method) if method is not None else im


def reduction(width: int, height: int) -> int:
    """The integer factor that brings width x height within MAX_DECODED_PIXELS (1: none needed)."""
    pixels = width * height
    if pixels <= MAX_DECODED_PIXELS:
        return 1
    return math.ceil(math.sqrt(pixels / MAX_DECODED_PIXELS))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit and float scaled, transparency composited on white."""
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit_grey(im)
    if im.mode == "La":  # premultiplied; Pillow converts it to LA only
        im = im.convert("LA")
    if "transparency" in im.info and im.mode in ("P", "L", "RGB"):
        im = im.convert("RGBA")
    if im.mode in ALPHA_MODES:
        return _on_white(im)
    return im if im.mode == "RGB" else im.convert("RGB")


def _to_8bit_grey(im: Image.Image) -> Image.Image:
    """Integer (16/32-bit) or float greyscale to mode L, scaled rather than clipped (float32: bounded memory)."""
    arr = np.nan_to_num(np.asarray(im, dtype=np.float32))
    if im.mode.startswith("I;16") or (im.mode == "I" and arr.size and arr.max() > 255):
        arr /= 257.0
    elif im.mode == "F" and arr.size and arr.max() <= 1.0:
        arr *= 255.0
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(np.rint(arr).astype(np.uint8))


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
