"""A corpus of odd image files, built by the tests themselves (seeded, so every run is the same).

``build(folder)`` writes: for each of nine formats a valid file, truncated copies and byte-mutated copies;
a nested decompression bomb (an ICNS whose 512x512 entry is a JPEG 2000 stream declaring 100,000 x 100,000);
a 1 x 100,000 strip; a Photoshop file; a file whose EXIF is corrupt; and, for the misbehaving test plugin
(plugins/pillow_evil.py), files that crash, loop, allocate without end or print from C.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "gif": "GIF",
    "tif": "TIFF",
    "webp": "WEBP",
    "bmp": "BMP",
    "ico": "ICO",
    "icns": "ICNS",
    "psd": "PSD",
}
EVIL = ("SEGV", "LOOP", "ALLOC", "WARN")


def picture(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    array[: size[1] // 2] //= 4  # some structure, so compressors have something to work with
    return Image.fromarray(array)


def psd_bytes(im: Image.Image) -> bytes:
    """A flat RGB Photoshop file (no layers, raw channels), as Pillow reads it; Pillow cannot write PSD."""
    width, height = im.size
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layer and mask info
    planes = b"".join(band.tobytes() for band in im.convert("RGB").split())
    return header + sections + struct.pack(">H", 0) + planes


def encode(im: Image.Image, fmt: str) -> bytes:
    if fmt == "PSD":
        return psd_bytes(im)
    buffer = io.BytesIO()
    if fmt == "ICNS":
        im.resize((64, 64)).save(buffer, fmt)
    elif fmt == "ICO":
        im.resize((32, 32)).save(buffer, fmt)
    else:
        im.save(buffer, fmt)
    return buffer.getvalue()


def nested_bomb() -> bytes:
    """An ICNS whose ic09 (512 x 512) entry is a JPEG 2000 codestream declaring 100,000 x 100,000 pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "JPEG2000", no_jp2=True)
    stream = bytearray(buffer.getvalue())
    siz = stream.index(b"\xff\x51")  # SIZ: marker, Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz
    struct.pack_into(">IIIIII", stream, siz + 6, 100_000, 100_000, 0, 0, 100_000, 100_000)
    entry = b"ic09" + struct.pack(">I", 8 + len(stream)) + bytes(stream)
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def strip(length: int = 100_000) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (length, 1), 128).save(buffer, "PNG")
    return buffer.getvalue()


def corrupt_exif() -> bytes:
    buffer = io.BytesIO()
    picture(3).save(buffer, "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12")
    return buffer.getvalue()


def mutations(data: bytes, seed: int, count: int = 4) -> list[bytes]:
    """Copies with a few bytes flipped after the first 8 (signatures stay, so the real decoder runs)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        mutated = bytearray(data)
        for position in rng.integers(min(8, len(data) - 1), len(data), 1 + len(data) // 200):
            mutated[int(position)] = int(rng.integers(0, 256))
        out.append(bytes(mutated))
    return out


def build(folder: Path, evil: bool = True) -> list[Path]:
    """Write the corpus into ``folder``; returns the files, in the order a directory walk finds them."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for number, (ext, fmt) in enumerate(FORMATS.items()):
        data = encode(picture(number), fmt)
        files[f"{ext}-valid.{ext}"] = data
        files[f"{ext}-cut-half.{ext}"] = data[: len(data) // 2]
        files[f"{ext}-cut-16.{ext}"] = data[:16]
        for i, mutated in enumerate(mutations(data, number)):
            files[f"{ext}-mutated-{i}.{ext}"] = mutated
    files["bomb-nested.icns"] = nested_bomb()
    files["strip-1x100000.png"] = strip()
    files["exif-corrupt.jpg"] = corrupt_exif()
    if evil:
        for kind in EVIL:
            files[f"evil-{kind.lower()}.png"] = b"EVIL" + kind.encode().ljust(5) + b"\0" * 64
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(folder / name for name in files)
