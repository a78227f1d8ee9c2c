"""A test-only Pillow plugin whose decoders misbehave, imported by the decoder processes through
MMCLI_PILLOW_PLUGINS=pillow_evil (with this folder on PYTHONPATH).

Files start with b"EVIL" and a word: SEGV (the decoder crashes in C), LOOP (it never returns), ALLOC (it
allocates without end), WARN (it writes to file descriptor 2, as libtiff does, and decodes fine).
"""

from __future__ import annotations

import ctypes
import os

from PIL import Image, ImageFile


def _accept(prefix: bytes) -> bool:
    return prefix[:4] == b"EVIL"


class EvilImageFile(ImageFile.ImageFile):
    format = "EVIL"
    format_description = "misbehaving test decoder"

    def _open(self) -> None:
        assert self.fp is not None
        self.kind = self.fp.read(9)[4:].strip()
        self._mode = "RGB"
        self._size = (16, 16)
        self.tile = []

    def load(self) -> Image.core.PixelAccess | None:  # type: ignore[name-defined]
        if self.kind == b"SEGV":
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        elif self.kind == b"LOOP":
            while True:
                pass
        elif self.kind == b"ALLOC":
            hoard = []
            while True:
                hoard.append(bytearray(64 << 20))
        elif self.kind == b"WARN":
            os.write(2, b'TIFFFetchNormalTag: ASCII value for tag "Software" does not end in null byte.\n')
        self.im = Image.core.fill("RGB", self.size, (1, 2, 3))
        return None


Image.register_open(EvilImageFile.format, EvilImageFile, _accept)
