"""How a contrastive model sees an image: ``--view``, ``--tiles``, ``--pool`` and ``--tta``.

A checkpoint's own processor squashes (shapes-clip) or centre-crops (CLIP) the image to a small square, so
a small object becomes a few pixels and one near the edge of a wide photo may be cut off. A view decides
which pictures of one decoded image the model encodes:

- ``model``: the processor alone (the default: records equal the transformers pipeline's);
- ``squash``: resized to the model's square input, aspect not kept;
- ``pad``: letterboxed to a square on the median colour of the image's border (measured against white,
  black, grey and the processor's mean: bench/views.py), so nothing is cut off;
- ``tiles``: the model view plus overlapping tiles over the whole image, each resized to the model's
  input (the grid follows the image size, with no tile smaller than that input, or is ``--tiles RxC``);
  their scores are pooled (pooling.py).

``--tta N`` encodes N pictures per image: the view itself and N-1 augmented copies (a crop of 80-100 % of
each side anywhere in the image, half of them mirrored), from a fixed schedule, so an image always gets the
same copies and its cached embeddings stay valid.

The pictures of one image go through the batch together (``preprocess`` adds their count under
``COUNT_KEY``); ``encode`` splits the rows back per image and packs each image's (V, D) matrix into one
1-D vector (its first element is V), which is what the embedding cache and a server's records carry.
Only decoded images (PIL images from the isolated decoders) reach this module. torch is imported inside
the functions: the commands check these options before it loads.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmcli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from mmcli.modeling.backends.base import Backend, Batch

KINDS = ("model", "squash", "pad", "tiles")
POOLS = ("mean", "max")
# mean, for classify and for search alike: max found a few more small shapes but, where one tile shows part
# of a large shape, outvoted the whole image (bench/views.py: ordinary shapes 79 % top-1 against 100 %)
DEFAULT_POOL = "mean"
COMBINES = ("zero", "mean")
OVERLAP = 0.25  # of a tile's side, between neighbours: 0.5 made larger tiles and found fewer small shapes
AUTO_TILES = 4  # tiles across the shorter side at most: 2 or 3 missed small shapes (bench/views.py, 2x3)
MAX_GRID = 16  # --tiles RxC: each of R and C at most this
MAX_TTA = 256
CROP_MIN = 0.8  # --tta: the smallest crop, as a share of each side
COUNT_KEY = "mmcli_views"  # a batch's pictures per image (removed before the model sees the batch)
GENERATIVE = "keeps its own high-resolution scheme (LLaVA-NeXT AnyRes, Idefics3 image splitting)"


@dataclass(frozen=True)
class View:
    """The view settings of a run: plain fields, so a Task carrying one travels as JSON to a server."""

    kind: str = "model"
    rows: int = 0  # --tiles RxC; 0: the grid follows the image size
    cols: int = 0
    pool: str = DEFAULT_POOL
    tta: int = 1
    combine: str = "zero"

    @property
    def multi(self) -> bool:
        """More than one picture per image: each image's value is a packed (V, D) matrix."""
        return self.kind == "tiles" or self.tta > 1

    @property
    def plain(self) -> bool:
        """Exactly the checkpoint's own processing: no view at all."""
        return self.kind == "model" and self.tta == 1

    def key(self) -> dict[str, Any]:
        """What changes the records: part of the resume key."""
        out: dict[str, Any] = {"view": self.kind}
        if self.kind == "tiles":
            out |= {"tiles": f"{self.rows}x{self.cols}" if self.rows else "auto", "pool": self.pool}
        if self.tta > 1:
            out |= {"tta": self.tta, "tta_combine": self.combine}
        return out

    def cache_tag(self, pooled: bool) -> list[Any]:
        """What changes a cached value: the pictures encoded, and whether they were averaged to one."""
        stored = "pooled" if pooled and self.multi else "views" if self.multi else "one"
        return [self.kind, self.rows, self.cols, OVERLAP if self.kind == "tiles" else None, self.tta, stored]


def parse_tiles(text: str) -> tuple[int, int]:
    """``--tiles RxC``: rows and columns, each 1 to MAX_GRID."""
    rows, sep, cols = text.lower().partition("x")
    if not sep or not rows.strip().isdigit() or not cols.strip().isdigit():
        raise UsageError(f"--tiles {text!r}: write ROWSxCOLUMNS, e.g. 2x3")
    r, c = int(rows), int(cols)
    if not (1 <= r <= MAX_GRID and 1 <= c <= MAX_GRID):
        raise UsageError(f"--tiles {text}: rows and columns must each be 1 to {MAX_GRID}")
    return r, c


def make_view(
    view: str | None = None,
    tiles: str | None = None,
    pool: str | None = None,
    tta: int | None = None,
    tta_combine: str | None = None,
    *,
    allow_tta: bool = True,
    one_vector: bool = False,
) -> View:
    """The View of the command-line options, checked: every mistake is one line, before any model loads."""
    kind = (view or "model").lower()
    if kind not in KINDS:
        raise UsageError(f"--view {view}: choose {', '.join(KINDS)}")
    rows = cols = 0
    if tiles is not None:
        if kind != "tiles":
            raise UsageError(f"--tiles is for --view tiles (not --view {kind})")
        rows, cols = parse_tiles(tiles)
    if pool is not None:
        if pool.lower() not in POOLS:
            raise UsageError(f"--pool {pool}: choose {' or '.join(POOLS)}")
        if kind != "tiles":
            raise UsageError(f"--pool combines tiles: it needs --view tiles (not --view {kind})")
        if one_vector and pool.lower() != "mean":
            raise UsageError("--pool max: embed gives one vector per image, the mean of its views")
    if tta is not None and not allow_tta:
        raise UsageError("--tta is for classify")
    count = 1 if tta is None else tta
    if count < 1 or count > MAX_TTA:
        raise UsageError(f"--tta {tta}: give 1 to {MAX_TTA} views per image")
    if count > 1 and kind == "tiles":
        raise UsageError("--tta and --view tiles cannot be used together: choose one")
    combine = (tta_combine or "zero").lower()
    if combine not in COMBINES:
        raise UsageError(f"--tta-combine {tta_combine}: choose {' or '.join(COMBINES)}")
    if tta_combine is not None and count < 2:
        raise UsageError("--tta-combine needs --tta 2 or more")
    return View(kind, rows, cols, (pool or DEFAULT_POOL).lower(), count, combine)


def refuse_generative(view: View | None, model: str) -> None:
    """Generative models keep their own schemes: a --view or --tta asked of one is a usage error."""
    if view is None or view.plain:
        return
    option = f"--view {view.kind}" if view.kind != "model" else f"--tta {view.tta}"
    raise UsageError(f"{option} is for contrastive models: {model} is generative and {GENERATIVE}")


# -- geometry ---------------------------------------------------------------------------------------------
def spans(length: int, n: int, overlap: float = OVERLAP) -> list[tuple[int, int]]:
    """``n`` intervals of one size over [0, length): the first starts at 0, the last ends at ``length``,
    neighbours overlap by about ``overlap`` of a tile, so every pixel is in at least one."""
    if n <= 1 or length <= 1:
        return [(0, length)]
    side = min(length, math.ceil(length / (n - (n - 1) * overlap)))
    starts = [round(i * (length - side) / (n - 1)) for i in range(n)]
    return [(start, start + side) for start in starts]


def grid(width: int, height: int, native: int, rows: int = 0, cols: int = 0) -> tuple[int, int]:
    """Rows and columns of tiles: ``--tiles`` when given, else from the image size: as many across the
    shorter side as fit without a tile smaller than the model's input (``native``), at most AUTO_TILES,
    and along the longer side as many as keep the tiles about square (at most 4 x AUTO_TILES)."""
    if rows and cols:
        return rows, cols
    short, long = min(width, height), max(width, height)

    def fit(side: int) -> int:  # tiles of at least ``native`` pixels over ``side``
        return math.floor((side / max(1, native) - OVERLAP) / (1 - OVERLAP))

    across = min(AUTO_TILES, fit(short))
    if across < 1:
        return 1, 1
    along = max(across, min(round(across * long / short), fit(long), 4 * AUTO_TILES))
    return (across, along) if width >= height else (along, across)


def tile_boxes(
    width: int, height: int, native: int, rows: int = 0, cols: int = 0
) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each tile, row by row; none for a 1x1 grid (the global view is it)."""
    r, c = grid(width, height, native, rows, cols)
    if r * c <= 1:
        return []
    return [(x0, y0, x1, y1) for y0, y1 in spans(height, r) for x0, x1 in spans(width, c)]


# -- pictures ---------------------------------------------------------------------------------------------
def squash(image: Image.Image, side: int) -> Image.Image:
    from PIL import Image

    return image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)


def edge_colour(image: Image.Image) -> tuple[int, int, int]:
    """The median colour of the image's outermost pixels: the letterbox fill that continues the background."""
    import numpy as np

    rgb = image.convert("RGB")
    w, h = rgb.size
    strips = [(0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h)]
    pixels = np.concatenate([np.asarray(rgb.crop(box)).reshape(-1, 3) for box in strips])
    r, g, b = (int(v) for v in np.median(pixels, axis=0))
    return r, g, b


def pad(image: Image.Image, side: int) -> Image.Image:
    """Letterboxed: the whole image, its longer side ``side``, centred on a square of its edge colour."""
    from PIL import Image

    rgb = image.convert("RGB")
    w, h = rgb.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new("RGB", (side, side), edge_colour(rgb))
    canvas.paste(rgb.resize(size, Image.Resampling.BICUBIC), ((side - size[0]) // 2, (side - size[1]) // 2))
    return canvas


def augment(image: Image.Image, i: int) -> Image.Image:
    """The ``i``-th TTA copy (0: the image itself): a fixed crop (80-100 % of each side, anywhere) and
    mirror for each ``i``, the same for every image."""
    from PIL import Image

    if i == 0:
        return image
    rng = random.Random(7919 * i)
    w, h = image.size
    cw, ch = max(1, round(w * rng.uniform(CROP_MIN, 1.0))), max(1, round(h * rng.uniform(CROP_MIN, 1.0)))
    x, y = round(rng.uniform(0, w - cw)), round(rng.uniform(0, h - ch))
    out = image.crop((x, y, x + cw, y + ch))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 == 1 else out


def pictures(view: View, image: Image.Image, native: int) -> list[Image.Image]:
    """What the model encodes of one image: the view (``--tta``: of each copy), then the tiles, if any."""

    def base(picture: Image.Image) -> Image.Image:
        if view.kind == "squash":
            return squash(picture, native)
        if view.kind == "pad":
            return pad(picture, native)
        return picture  # model, and the global view of tiles: the processor's own

    out = [base(augment(image, i)) for i in range(view.tta)]
    if view.kind == "tiles":
        boxes = tile_boxes(image.width, image.height, native, view.rows, view.cols)
        out += [squash(image.crop(box), native) for box in boxes]
    return out


def input_size(backend: Backend) -> int:
    """The side of the model's square input (a backend may say; else 224, CLIP's)."""
    size = getattr(backend, "input_size", None)
    return int(size()) if callable(size) else 224


# -- the Task hooks (run.task.Task.preprocess / encode) -----------------------------------------------------
def preprocess(view: View, backend: Backend, images: list[Image.Image]) -> Batch:
    """All pictures of ``images`` through the model's processor; with several per image, their counts."""
    import torch

    native = input_size(backend)
    shown = [pictures(view, image, native) for image in images]
    batch = backend.preprocess([p for each in shown for p in each])
    if view.multi:
        batch[COUNT_KEY] = torch.tensor([len(each) for each in shown], dtype=torch.long)
    return batch


def encode(backend: Backend, batch: Batch) -> list[torch.Tensor]:
    """One value per image: its embedding, or (several pictures) its packed (V, D) matrix."""
    if COUNT_KEY not in batch:
        return list(backend.encode_images(batch))
    counts = batch[COUNT_KEY].tolist()
    rows = backend.encode_images({k: v for k, v in batch.items() if k != COUNT_KEY})
    return [pack(part) for part in rows.split(counts)]


def pack(matrix: torch.Tensor) -> torch.Tensor:
    """A (V, D) matrix as one 1-D float32 vector: V, then the rows."""
    import torch

    return torch.cat([torch.tensor([float(matrix.shape[0])]), matrix.float().reshape(-1)])


def unpack(value: Any) -> Any:
    """The (V, D) matrix of ``pack`` (a tensor or a numpy array, as given)."""
    count = int(value[0])
    return value[1:].reshape(count, -1)


def one_vector(value: torch.Tensor) -> torch.Tensor:
    """One embedding for a packed image (embed): the global view and the mean of its tiles weighted as in
    pooling's ``mean``, half and half, normalised again."""
    import torch

    from mmcli.modeling.pooling import GLOBAL_WEIGHT

    matrix = unpack(value)
    if len(matrix) == 1:
        return matrix[0]
    mixed = GLOBAL_WEIGHT * matrix[0] + (1 - GLOBAL_WEIGHT) * matrix[1:].mean(dim=0)
    return torch.nn.functional.normalize(mixed, dim=-1)
