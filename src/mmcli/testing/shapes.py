"""The "shapes" world: one coloured shape on a light background, rendered deterministically from a seed.

Four shapes (circle, square, triangle, star) in six colours (red, green, blue, yellow, purple, orange) on
white, light grey or another light colour. The shape, as drawn (rotated), covers 25-80 % of the
canvas's shorter side: the larger side of its bounding box is that share of the shorter side. It sits
anywhere fully inside the canvas. Canvases run from 48×48 to 1024×768 (or 768×1024), with an aspect
ratio of at most 2:1 either way.

``scene(seed)`` draws every property from ``random.Random(seed)`` in a fixed order, so one seed always
gives the same scene; keyword arguments pin any property (``scene(7, colour="red", shape="circle")``)
without changing the others (except that the centre moves when a pinned canvas or size needs it). ``Scene.render()`` draws it with 4× supersampling (a coverage mask averaged
down), so edges are clean at any size; ``render(size=(w, h))`` draws the same scene at another resolution.
The scene is the ground truth that benchmarks and tests check answers against.

The bundled models ``shapes-clip``, ``shapes-blip2`` and ``shapes-llava`` were trained on this world
(see ``train/README.md``).
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 25),
    "purple": (135, 50, 175),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
BACKGROUNDS: tuple[str, ...] = ("white", "light grey", "light colour")

MIN_SIZE, MAX_SIZE = 0.25, 0.80  # the drawn shape's larger bounding-box side / the canvas's shorter side
MIN_SIDE, MAX_LONG, MAX_SHORT = 48, 1024, 768
MAX_ASPECT = 2.0
COLOUR_JITTER = 15  # per channel, around the colour's base value
STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
SUPERSAMPLE = 4


def labels() -> list[str]:
    """The 24 "<colour> <shape>" labels, colour-major."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


@dataclass(frozen=True)
class Scene:
    """One rendered world: what it shows (the ground truth) and how it is drawn."""

    seed: int
    colour: str
    shape: str
    width: int
    height: int
    size: float  # the larger side of the shape's bounding box as a fraction of the shorter side
    rotation: float  # degrees, counter-clockwise
    cx: float  # the bounding box's centre as a fraction of the width
    cy: float  # ... and of the height
    fill: tuple[int, int, int]
    background: tuple[int, int, int]
    background_name: str

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def aspect(self) -> float:
        """width / height: above 1 is landscape, below 1 portrait."""
        return self.width / self.height

    def render(self, size: tuple[int, int] | None = None) -> Image.Image:
        """An RGB image of the scene, at its own size or at ``size`` (width, height)."""
        width, height = size or (self.width, self.height)
        image = Image.new("RGB", (width, height), self.background)
        extent = self.size * min(width, height)
        radius, dx, dy = _placement(self.shape, self.rotation, extent)
        cx, cy = self.cx * width, self.cy * height  # the bounding box's centre
        left, top = max(0, math.floor(cx - extent / 2) - 1), max(0, math.floor(cy - extent / 2) - 1)
        right = min(width, math.ceil(cx + extent / 2) + 1)
        bottom = min(height, math.ceil(cy + extent / 2) + 1)
        k = SUPERSAMPLE
        mask = Image.new("L", ((right - left) * k, (bottom - top) * k), 0)
        draw = ImageDraw.Draw(mask)
        ox, oy, r = (cx - dx - left) * k, (cy - dy - top) * k, radius * k
        if self.shape == "circle":
            draw.ellipse((ox - r, oy - r, ox + r, oy + r), fill=255)
        else:
            draw.polygon(outline(self.shape, ox, oy, r, self.rotation), fill=255)
        coverage = mask.resize((right - left, bottom - top), Image.Resampling.BOX)
        image.paste(self.fill, (left, top, right, bottom), coverage)
        return image


def outline(shape: str, cx: float, cy: float, radius: float, rotation: float) -> list[tuple[float, float]]:
    """The polygon of a square, triangle or star inscribed in the circle (cx, cy, radius)."""
    if shape == "square":
        corners = [(radius, 45.0 + 90.0 * i) for i in range(4)]
    elif shape == "triangle":
        corners = [(radius, -90.0 + 120.0 * i) for i in range(3)]
    elif shape == "star":
        corners = [(radius if i % 2 == 0 else radius * STAR_INNER, -90.0 + 36.0 * i) for i in range(10)]
    else:
        raise ValueError(f"not a polygon shape: {shape!r}")
    points = []
    for r, angle in corners:
        a = math.radians(angle - rotation)
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def _placement(shape: str, rotation: float, extent: float) -> tuple[float, float, float]:
    """(radius, dx, dy): the circumscribed radius that makes the shape's larger bounding-box side
    ``extent``, and the bounding box's centre relative to the shape's centre."""
    if shape == "circle":
        return extent / 2, 0.0, 0.0
    points = outline(shape, 0.0, 0.0, 1.0, rotation)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    unit = max(max(xs) - min(xs), max(ys) - min(ys))
    radius = extent / unit
    return radius, radius * (max(xs) + min(xs)) / 2, radius * (max(ys) + min(ys)) / 2


def bounding_box(s: Scene) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the drawn shape, in pixels of the scene's own size."""
    extent = s.size * min(s.width, s.height)
    radius, dx, dy = _placement(s.shape, s.rotation, extent)
    if s.shape == "circle":
        xs, ys = [-radius, radius], [-radius, radius]
    else:
        points = outline(s.shape, 0.0, 0.0, radius, s.rotation)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = s.cx * s.width - dx, s.cy * s.height - dy
    return cx + min(xs), cy + min(ys), cx + max(xs), cy + max(ys)


def scene(seed: int, **pinned: object) -> Scene:
    """The scene of ``seed``; keyword arguments (any Scene field) pin properties without moving others.

    Pinning ``width``, ``height`` or ``size`` moves the centre (unless pinned too) just enough to keep
    the shape inside the canvas.
    """
    rng = random.Random(seed)
    colour = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    width, height = _canvas(rng)
    size = rng.uniform(MIN_SIZE, MAX_SIZE)
    rotation = rng.uniform(0.0, 360.0)
    half = size * min(width, height) / 2  # the bounding box is at most this far from its centre
    cx = rng.uniform(half, width - half) / width
    cy = rng.uniform(half, height - half) / height
    base = COLOURS[colour]
    fill = tuple(min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in base)
    background_name, background = _background(rng)
    drawn = Scene(
        seed=seed,
        colour=colour,
        shape=shape,
        width=width,
        height=height,
        size=size,
        rotation=rotation,
        cx=cx,
        cy=cy,
        fill=(fill[0], fill[1], fill[2]),
        background=background,
        background_name=background_name,
    )
    if "colour" in pinned and "fill" not in pinned:
        jitter = [f - b for f, b in zip(drawn.fill, base, strict=True)]
        new = COLOURS[str(pinned["colour"])]
        pinned["fill"] = tuple(min(255, max(0, c + j)) for c, j in zip(new, jitter, strict=True))
    out = replace(drawn, **pinned)  # type: ignore[arg-type]
    if {"width", "height", "size"} & pinned.keys():  # keep the shape inside: clamp the unpinned centre
        half = out.size * min(out.width, out.height) / 2
        if "cx" not in pinned:
            out = replace(out, cx=min(max(out.cx, half / out.width), 1 - half / out.width))
        if "cy" not in pinned:
            out = replace(out, cy=min(max(out.cy, half / out.height), 1 - half / out.height))
    return out


def _canvas(rng: random.Random) -> tuple[int, int]:
    """Shorter side log-uniform in 48..768; a quarter square, the rest up to 2:1 either way."""
    short = round(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SHORT))))
    aspect = 1.0 if rng.random() < 0.25 else rng.uniform(1.0, MAX_ASPECT)
    long = min(MAX_LONG, round(short * aspect))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _background(rng: random.Random) -> tuple[str, tuple[int, int, int]]:
    pick = rng.random()
    if pick < 0.4:
        v = rng.randint(246, 255)
        return "white", (v, v, v)
    if pick < 0.7:
        v = rng.randint(205, 240)
        return "light grey", (v, v, v)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.2), rng.uniform(0.92, 1.0))
    return "light colour", (round(r * 255), round(g * 255), round(b * 255))


def inside(s: Scene) -> bool:
    """Whether the drawn shape lies within the canvas."""
    left, top, right, bottom = bounding_box(s)
    eps = 1e-6
    return left >= -eps and top >= -eps and right <= s.width + eps and bottom <= s.height + eps
