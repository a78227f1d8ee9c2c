"""Thumbnails for the HTML report, made beside the run in a few threads.

The images are untrusted, so their bytes are decoded only in isolated decoder processes (mmcli.sources.decoder, the
same memory and time limits as the run); the bounded RGB pixels that come back are safe to shrink here.
Finished thumbnails go to an anonymous spool file, not to memory, so 10,000 of them cost the run a few
megabytes of RAM; the page streams them from the spool when it is written.

Only local files are decoded for a thumbnail: a URL is never downloaded a second time for a report (it costs
the time and traffic again, and could answer with another image than the one the model saw), so it gets a
placeholder, unless the run hands over a thumbnail it made from the pixels it decoded itself
(``thumbnail_jpeg``).
Any failure is a placeholder with its reason, never an exception.
"""

from __future__ import annotations

import base64
import io
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mmcli.sources.fetch import is_url
from mmcli.sources.limits import check_regular_file

if TYPE_CHECKING:
    from mmcli.sources.decoder import Decoders

THUMB_SIZE = 192  # pixels on the long side (the brief allows up to 256; 192 keeps 10,000 under ~50 MB)
THUMB_QUALITY = 75  # JPEG quality: plenty for review by eye at this size
MAX_THUMBNAILS = 20_000  # beyond this many distinct images a report gets placeholders (page size)
NOT_FETCHED = "a URL: not downloaded again for the report"


def thumbnail_jpeg(image: Any, size: int = THUMB_SIZE) -> bytes:
    """A JPEG thumbnail (at most ``size`` on the long side, never enlarged) of decoded RGB pixels: safe in
    any process, as nothing is parsed. Bilinear after a box reduction: half the time of bicubic, and as
    good at this size."""
    from PIL import Image

    width, height = image.size
    scale = min(size / width, size / height)
    small = image
    if scale < 1:  # resize makes a new image: the caller's pixels are left as they are
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=THUMB_QUALITY)
    return out.getvalue()


class Thumbnails:
    """``want(input)`` → a thumbnail id (the same input gets the same id); ``spooled()`` at the end yields,
    per id, the JPEG as base64 text or the reason it has none."""

    def __init__(
        self,
        threads: int,
        max_pixels: int,
        decode_memory: int,
        decode_timeout: float,
        size: int = THUMB_SIZE,
        limit: int = MAX_THUMBNAILS,
    ):
        self.threads = max(1, threads)
        self.max_pixels = max_pixels
        self.memory = decode_memory
        self.timeout = decode_timeout
        self.size = size
        self.limit = limit
        self.ids: dict[str, int] = {}
        self._results: list[Future[tuple[int, int] | str] | tuple[int, int] | str] = []
        self._pool: ThreadPoolExecutor | None = None
        self._decoders: Decoders | None = None
        self._spool = tempfile.TemporaryFile(prefix="mmcli-report-")  # noqa: SIM115 (closed by close())
        self._lock = threading.Lock()
        self.over_limit = 0  # distinct images past ``limit``

    def want(self, name: str, ready: bytes | None = None) -> int:
        """Queue ``name`` for a thumbnail (at most once) and return its id; never blocks on decoding.
        ``ready``: its thumbnail, already made (``thumbnail_jpeg``) from the pixels the run decoded: no
        decoding."""
        known = self.ids.get(name)
        if known is not None:
            return known
        index = self.ids[name] = len(self._results)
        if ready is not None and len(self.ids) <= self.limit:
            self._results.append(self._store(base64.b64encode(ready)))
        elif is_url(name):
            self._results.append(NOT_FETCHED)
        elif len(self.ids) > self.limit:
            self.over_limit += 1
            self._results.append(f"over the report's limit of {self.limit:,} thumbnails")
        else:
            self._results.append(self._executor().submit(self._make, name))
        return index

    def spooled(self) -> Iterator[bytes | str]:
        """Per id in order: base64 JPEG bytes, or the reason there is none. Waits for the threads."""
        for result in self._results:
            value = result.result() if isinstance(result, Future) else result
            if isinstance(value, str):
                yield value
                continue
            offset, length = value
            with self._lock:
                self._spool.seek(offset)
                yield self._spool.read(length)

    def wait(self) -> None:
        """Every queued thumbnail done; the decoder processes and threads closed."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._close_decoders()

    def close(self, cancel: bool = False) -> None:
        """Free the spool; safe to call more than once. ``cancel``: drop the queued work and do not wait for
        the thumbnails being made (a run that failed should not wait up to a decode timeout)."""
        if self._pool is not None:
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
        self._close_decoders()
        self._spool.close()

    # -- the work --------------------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            from mmcli.sources.decoder import Decoders

            self._decoders = Decoders(self.threads, self.memory, self.timeout)
            self._decoders.start()
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mmcli-report")
        return self._pool

    def _make(self, name: str) -> tuple[int, int] | str:
        try:
            data = self._thumbnail(name)
        except Exception as exc:  # a placeholder with the reason, whatever went wrong
            from mmcli.sources.inputs import describe_error

            return str(exc) if type(exc).__name__ == "InputError" else describe_error(exc)
        return self._store(data)

    def _store(self, data: bytes) -> tuple[int, int]:
        with self._lock:
            self._spool.seek(0, io.SEEK_END)
            offset = self._spool.tell()
            self._spool.write(data)
        return offset, len(data)

    def _thumbnail(self, name: str) -> bytes:
        decoders = self._decoders
        if decoders is None:
            raise RuntimeError("the report was stopped")
        check_regular_file(name)  # never hand a FIFO or a directory to a decoder
        image = decoders.decode(path=name, max_pixels=self.max_pixels).image
        return base64.b64encode(thumbnail_jpeg(image, self.size))

    def _close_decoders(self) -> None:
        if self._decoders is not None:
            self._decoders.close()
            self._decoders = None
