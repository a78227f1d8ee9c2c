"""The limits every untrusted image meets, in one place: the options' defaults and their parsing.

Imports nothing heavy: the CLI's option definitions read these without loading Pillow.
"""

from __future__ import annotations

import os
import stat

from mmcli.errors import InputError

# Pillow's own default limit (about 13,400 x 13,400 pixels); --max-pixels raises or lowers it.
DEFAULT_MAX_PIXELS = 178_956_970
DEFAULT_DECODE_MEMORY = 2 << 30  # bytes of address space per decoder process (--decode-memory)
DEFAULT_DECODE_TIMEOUT = 30.0  # seconds per image (--decode-timeout)
# Longer side over shorter side; beyond it a resize to the model's short side cannot be bounded.
MAX_ASPECT = 50
# At most this many pixels leave a decoder: bigger images are reduced (box filter) by an integer factor.
MAX_DECODED_PIXELS = 4096 * 4096


def size_text(n: int) -> str:
    """2147483648 -> '2 GB' (binary units, as --decode-memory takes them)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def parse_size(text: str) -> int:
    """'2G', '512M', '1.5GB', '800' (MB) -> bytes. Raises ValueError with the reason."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1 << 20
    if value and value[-1] in "KMG":
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[value[-1]]
        value = value[:-1]
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; say 2G or 512M") from None
    if not number * scale >= 256 << 20:
        raise ValueError(f"{text!r} is too small: a decoder needs at least 256M")
    return int(number * scale)


def check_regular_file(path: str) -> None:
    """Refuse directories, FIFOs, devices and empty files before Pillow opens (or blocks on) them."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise InputError("is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise InputError("not a regular file")
    if st.st_size == 0:
        raise InputError("empty file")
