"""mmcli.sources.inputs: expanding CLI inputs into items, and decoding images safely to RGB.

Every image is built here, in ``tmp_path``, with Pillow and numpy.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageFile

from mmcli.errors import InputError
from mmcli.sources import imaging
from mmcli.sources.inputs import Item, expand, load_image, read_paths, to_rgb, walk

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# -- helpers ---------------------------------------------------------------------------------------
def near(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 3) -> bool:
    return len(actual) == len(expected) and all(
        abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)
    )


def pixels(im: Image.Image) -> list[tuple[int, ...]]:
    """Row-major RGB pixels of ``im`` as tuples of ints."""
    assert im.mode == "RGB"
    return [tuple(int(v) for v in px) for px in np.asarray(im).reshape(-1, 3)]


def solid(path: Path, colour: tuple[int, int, int] = RED, size: tuple[int, int] = (8, 6)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def stored(path: Path) -> tuple[str, dict[str, object], int]:
    """Mode, info and frame count of the file as Pillow opens it (closing it again)."""
    with Image.open(path) as im:
        return im.mode, dict(im.info), getattr(im, "n_frames", 1)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def noise_file(path: Path, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def error_of(path: Path | str, **kwargs: int) -> str:
    with pytest.raises(InputError) as info:
        load_image(str(path), **kwargs)
    return str(info.value)


# -- EXIF orientation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("orientation", "size", "red_corner"),
    [
        (1, (40, 20), "top-left"),
        (3, (40, 20), "bottom-right"),
        (6, (20, 40), "top-right"),  # rotate 90 degrees clockwise to display
        (8, (20, 40), "bottom-left"),  # rotate 90 degrees counter-clockwise to display
    ],
)
def test_exif_orientation_is_applied(
    tmp_path: Path, orientation: int, size: tuple[int, int], red_corner: str
) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:] = BLUE
    stored[:8, :8] = RED  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "oriented.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)

    out = load_image(str(path))

    assert out.mode == "RGB"
    assert out.size == size
    w, h = size
    corners = {
        "top-left": (2, 2),
        "top-right": (w - 3, 2),
        "bottom-left": (2, h - 3),
        "bottom-right": (w - 3, h - 3),
    }
    for name, xy in corners.items():
        expected = RED if name == red_corner else BLUE
        assert near(out.getpixel(xy), expected, tol=20), (name, out.getpixel(xy))


# -- modes to RGB ---------------------------------------------------------------------------------------
def test_palette_png(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([*RED, *BLUE])
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png")
    assert stored(tmp_path / "p.png")[0] == "P"
    assert pixels(load_image(str(tmp_path / "p.png"))) == [RED, BLUE]


@pytest.mark.parametrize("ext", [".png", ".gif"])
def test_palette_with_transparency_composited_on_white(tmp_path: Path, ext: str) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([*RED, *BLUE])
    im.putpixel((1, 0), 1)
    path = tmp_path / f"pt{ext}"
    im.save(path, transparency=0)  # palette entry 0 (red) is transparent
    mode, info, _ = stored(path)
    assert mode == "P" and "transparency" in info
    assert pixels(load_image(str(path))) == [WHITE, BLUE]


def test_rgba_transparent_on_white_opaque_kept(tmp_path: Path) -> None:
    arr = np.array([[(*RED, 0), (*GREEN, 255), (0, 0, 0, 128)]], dtype=np.uint8)
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "rgba.png")
    out = pixels(load_image(str(tmp_path / "rgba.png")))
    assert out[0] == WHITE
    assert out[1] == GREEN
    assert near(out[2], (127, 127, 127), tol=1)  # half-transparent black over white


def test_la_greyscale_with_alpha(tmp_path: Path) -> None:
    Image.new("LA", (3, 1)).save(tmp_path / "x.png")  # make sure LA PNG round-trips
    im = Image.new("LA", (3, 1))
    im.putpixel((0, 0), (100, 0))
    im.putpixel((1, 0), (100, 255))
    im.putpixel((2, 0), (0, 128))
    im.save(tmp_path / "la.png")
    assert stored(tmp_path / "la.png")[0] == "LA"
    out = pixels(load_image(str(tmp_path / "la.png")))
    assert out[0] == WHITE
    assert out[1] == (100, 100, 100)
    assert near(out[2], (127, 127, 127), tol=1)


def test_premultiplied_modes() -> None:
    la = Image.new("La", (2, 1), (0, 0))
    la.putpixel((1, 0), (100, 255))
    assert pixels(to_rgb(la)) == [WHITE, (100, 100, 100)]
    rgba = Image.new("RGBa", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (*GREEN, 255))
    assert pixels(to_rgb(rgba)) == [WHITE, GREEN]


def test_greyscale_and_bilevel(tmp_path: Path) -> None:
    Image.new("L", (1, 1), 100).save(tmp_path / "l.png")
    assert pixels(load_image(str(tmp_path / "l.png"))) == [(100, 100, 100)]
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    bilevel.save(tmp_path / "one.png")
    assert stored(tmp_path / "one.png")[0] == "1"
    assert pixels(load_image(str(tmp_path / "one.png"))) == [(0, 0, 0), WHITE]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_colour_key_transparency_composited_on_white(tmp_path: Path, mode: str) -> None:
    """PNG tRNS on an RGB or L image: pixels of the key colour are transparent."""
    key = (10, 20, 30) if mode == "RGB" else 10
    other = (1, 2, 3) if mode == "RGB" else 200
    im = Image.new(mode, (2, 1), key)
    im.putpixel((1, 0), other)
    im.save(tmp_path / "trns.png", transparency=key)
    assert "transparency" in stored(tmp_path / "trns.png")[1]
    out = pixels(load_image(str(tmp_path / "trns.png")))
    assert out[0] == WHITE
    assert out[1] == ((1, 2, 3) if mode == "RGB" else (200, 200, 200))


def test_cmyk_tiff_and_jpeg(tmp_path: Path) -> None:
    cyan = Image.new("CMYK", (4, 4), (255, 0, 0, 0))
    assert pixels(to_rgb(cyan))[0] == (0, 255, 255)
    cyan.save(tmp_path / "c.tif")
    cyan.save(tmp_path / "c.jpg", quality=100)
    assert stored(tmp_path / "c.jpg")[0] == "CMYK"
    assert pixels(load_image(str(tmp_path / "c.tif")))[0] == (0, 255, 255)
    assert near(pixels(load_image(str(tmp_path / "c.jpg")))[0], (0, 255, 255), tol=8)


def test_sixteen_bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[65535, 32768, 0, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert stored(tmp_path / "g16.png")[0] in ("I;16", "I")
    out = [px[0] for px in pixels(load_image(str(tmp_path / "g16.png")))]
    assert out == [255, 128, 0, 4]


def test_thirty_two_bit_integer_mode() -> None:
    sixteen_bit_range = Image.fromarray(np.array([[65535, 32768, 0]], dtype=np.int32))
    assert sixteen_bit_range.mode == "I"
    assert [px[0] for px in pixels(to_rgb(sixteen_bit_range))] == [255, 128, 0]
    eight_bit_range = Image.fromarray(np.array([[200, 7, 0]], dtype=np.int32))
    assert [px[0] for px in pixels(to_rgb(eight_bit_range))] == [200, 7, 0]


def test_float_mode(tmp_path: Path) -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan, -3.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert [px[0] for px in pixels(to_rgb(unit))] == [0, 128, 255, 0, 0]
    byte_range = Image.fromarray(np.array([[0.0, 100.4, 300.0]], dtype=np.float32))
    assert [px[0] for px in pixels(to_rgb(byte_range))] == [0, 100, 255]
    unit.save(tmp_path / "f.tif")
    assert stored(tmp_path / "f.tif")[0] == "F"
    assert [px[0] for px in pixels(load_image(str(tmp_path / "f.tif")))] == [0, 128, 255, 0, 0]


def test_ycbcr_and_hsv() -> None:
    assert near(pixels(to_rgb(Image.new("YCbCr", (1, 1), (76, 85, 255))))[0], RED)
    assert near(pixels(to_rgb(Image.new("HSV", (1, 1), (85, 255, 255))))[0], GREEN)


def test_rgb_kept() -> None:
    im = Image.new("RGB", (1, 1), (1, 2, 3))
    assert pixels(to_rgb(im)) == [(1, 2, 3)]


# -- animations ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".gif", ".png"])
def test_animation_first_frame(tmp_path: Path, ext: str) -> None:
    frames = [Image.new("RGB", (8, 6), colour) for colour in (RED, GREEN, BLUE)]
    path = tmp_path / f"anim{ext}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert stored(path)[2] == 3

    out = load_image(str(path))

    assert out.size == (8, 6)
    assert set(pixels(out)) == {RED}


# -- decompression bombs ---------------------------------------------------------------------------------
def test_pixel_limit_refused_then_accepted_when_raised(tmp_path: Path) -> None:
    path = solid(tmp_path / "big.png", size=(100, 100))
    message = error_of(path, max_pixels=9_999)
    assert "--max-pixels" in message and "100x100" in message
    assert load_image(str(path), max_pixels=10_000).size == (100, 100)


def test_pixel_limit_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    decoded: list[object] = []

    def no_decoding(self: ImageFile.ImageFile) -> None:
        decoded.append(self)
        raise AssertionError("pixel data decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InputError) as info:  # in this process, where the patch applies
        imaging.decode(str(path), max_pixels=1_000_000)
    message = str(info.value)
    assert "--max-pixels" in message
    assert "10,000,000,000" in message
    assert decoded == []


def test_header_claiming_more_than_the_data_holds_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "liar.png"
    path.write_bytes(png_claiming(2000, 2000))
    message = error_of(path, max_pixels=10_000_000)
    assert "--max-pixels" not in message
    assert "truncated" in message or "corrupt" in message


# -- bad files ---------------------------------------------------------------------------------------------
def test_random_bytes_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not an image" in error_of(path)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_image_is_an_error(tmp_path: Path, ext: str) -> None:
    data = noise_file(tmp_path / f"whole{ext}")
    assert load_image(str(tmp_path / f"whole{ext}")).size == (96, 64)
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    message = error_of(cut)
    assert "truncated" in message or "corrupt" in message


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert error_of(tmp_path / "empty.png") == "empty file"


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("just some text\n")
    assert "not an image" in error_of(tmp_path / "notes.png")


def test_unreadable_file(tmp_path: Path) -> None:
    path = solid(tmp_path / "secret.png")
    path.chmod(0)
    try:
        if os.geteuid() == 0:  # root reads it anyway
            assert load_image(str(path)).size == (8, 6)
        else:
            assert "permission denied" in error_of(path)
    finally:
        path.chmod(0o644)


def test_permission_error_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What chmod 000 gives a non-root user, whoever runs the tests."""
    path = solid(tmp_path / "secret.png")

    def refuse(*args: object, **kwargs: object) -> Image.Image:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(InputError, match="permission denied"):  # in this process, where the patch applies
        imaging.decode(str(path), max_pixels=1_000_000)


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    assert error_of(tmp_path / "folder.png") == "is a directory"


def test_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.png") == "no such file or directory"


def test_fifo_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    assert error_of(tmp_path / "pipe.png") == "not a regular file"


def test_eps_never_handed_to_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    path = tmp_path / "evil.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n")
    assert "not an image" in error_of(path)
    assert calls == []


def test_loaded_image_outlives_the_file(tmp_path: Path) -> None:
    path = solid(tmp_path / "gone.png", GREEN)
    out = load_image(str(path))
    path.unlink()
    assert set(pixels(out)) == {GREEN}


# -- odd file names --------------------------------------------------------------------------------------------
ODD_NAMES = ["with space.png", "ünïcødé 画像.png", "new\nline.png", "-leading-dash.png", "[1].png"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names(tmp_path: Path, name: str) -> None:
    path = solid(tmp_path / name, BLUE)
    assert set(pixels(load_image(str(path)))) == {BLUE}
    assert list(expand([str(path)])) == [Item(str(path))]
    assert list(expand([str(tmp_path)])) == [Item(str(path))]
    stdin = io.BytesIO(os.fsencode(str(path)) + b"\0")
    assert list(expand(["-"], stdin, null=True)) == [Item(str(path))]


def test_non_utf8_name_through_stdin_and_walk(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), GREEN).save(buf, format="PNG")
    raw = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9 \xff.png")
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, buf.getvalue())
    finally:
        os.close(fd)

    items = list(expand(["-"], io.BytesIO(raw + b"\n")))
    assert items == [Item(os.fsdecode(raw))]
    assert os.fsencode(items[0].input) == raw
    assert set(pixels(load_image(items[0].input))) == {GREEN}
    assert list(walk(str(tmp_path))) == [os.fsdecode(raw)]


# -- expand: files, directories, globs, missing ------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hiddendir").mkdir()
    for rel in [
        "b.png",
        "a.jpg",
        "z.png",
        "sub/c.JPG",
        "sub/deeper/d.webp",
        ".hidden.png",
        ".hiddendir/e.png",
    ]:
        solid(root / rel)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "data.json").write_text("{}")
    (root / "link").symlink_to(root / "sub", target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "m-link.png").symlink_to(root / "a.jpg")
    return root


def expected_tree(root: Path) -> list[Item]:
    rels = ["a.jpg", "b.png", "m-link.png", "sub/c.JPG", "sub/deeper/d.webp", "z.png"]
    return [Item(os.path.join(str(root), *rel.split("/"))) for rel in rels]


def test_expand_file_as_given(tmp_path: Path) -> None:
    image = solid(tmp_path / "one.png")
    text = tmp_path / "named.txt"
    text.write_text("x")
    # A file named explicitly is taken as given, whatever its extension: load_image judges it.
    assert list(expand([str(image), str(text)])) == [Item(str(image)), Item(str(text))]


def test_expand_directory_recursive_sorted_filtered(tree: Path) -> None:
    assert list(expand([str(tree)])) == expected_tree(tree)
    assert list(walk(str(tree))) == [item.input for item in expected_tree(tree)]


def test_expand_directory_with_trailing_slash(tree: Path) -> None:
    assert list(expand([str(tree) + os.sep])) == expected_tree(tree)


def test_unreadable_subdirectory_is_reported_and_the_walk_goes_on(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_scandir = os.scandir
    sub = str(tree / "sub")

    def scandir(path: str) -> object:
        if path == sub:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(expand([str(tree)]))
    assert [item.input for item in items] == [
        str(tree / "a.jpg"),
        str(tree / "b.png"),
        str(tree / "m-link.png"),
        sub,
        str(tree / "z.png"),
    ]
    assert items[3].error == "cannot read directory: Permission denied"
    assert all(item.error is None for i, item in enumerate(items) if i != 3)
    with pytest.raises(InputError, match="cannot read directory"):
        list(walk(str(tree)))


def test_expand_empty_directory_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert list(expand([str(tmp_path / "empty")])) == []


def test_expand_glob(tmp_path: Path) -> None:
    g = tmp_path / "g"
    (g / "nested").mkdir(parents=True)
    (g / "x4.png").mkdir()  # a directory named like an image is not a match
    for name in ["x2.jpg", "x1.png", "nested/x5.png"]:
        solid(g / name)
    (g / "x3.txt").write_text("x")
    solid(g / ".x0.png")  # hidden: wildcards do not match it

    assert list(expand([str(g / "x*")])) == [Item(str(g / "x1.png")), Item(str(g / "x2.jpg"))]
    assert list(expand([str(g / "**" / "*.png")])) == [
        Item(str(g / "nested" / "x5.png")),
        Item(str(g / "x1.png")),
    ]
    for pattern in [str(g / "nothing*"), str(g / "*.txt")]:
        assert list(expand([pattern])) == [Item(pattern, "no image files match this pattern")]


def test_existing_name_with_glob_characters_is_literal(tmp_path: Path) -> None:
    literal = solid(tmp_path / "[ab].png")
    solid(tmp_path / "a.png")
    assert list(expand([str(literal)])) == [Item(str(literal))]


def test_expand_missing_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.jpg")
    assert list(expand([missing])) == [Item(missing, "no such file or directory")]


def test_expand_keeps_argument_order(tmp_path: Path) -> None:
    first, second, third = (solid(tmp_path / f"{n}.png") for n in ("3", "1", "2"))
    stdin = io.BytesIO(f"{second}\n".encode())
    assert [item.input for item in expand([str(first), "-", str(third)], stdin)] == [
        str(first),
        str(second),
        str(third),
    ]


# -- expand: paths on stdin -------------------------------------------------------------------------------------
@pytest.fixture
def two(tmp_path: Path) -> tuple[str, str]:
    return str(solid(tmp_path / "one.png")), str(solid(tmp_path / "two words.png"))


@pytest.mark.parametrize(
    "template",
    [
        "{a}\n{b}\n",  # newline-separated
        "{a}\n{b}",  # no final newline
        "{a}\r\n{b}\r\n",  # CRLF
        "\n\n{a}\n\n   \n{b}\n\n",  # blank and whitespace-only lines
    ],
)
def test_stdin_lines(two: tuple[str, str], template: str) -> None:
    a, b = two
    stdin = io.BytesIO(template.format(a=a, b=b).encode())
    assert list(expand(["-"], stdin)) == [Item(a), Item(b)]


def test_stdin_nul_separated(tmp_path: Path, two: tuple[str, str]) -> None:
    a, _ = two
    odd = str(solid(tmp_path / "line\nbreak.png"))
    stdin = io.BytesIO(f"{a}\0{odd}\0".encode())
    assert list(expand(["-"], stdin, null=True)) == [Item(a), Item(odd)]
    stdin = io.BytesIO(f"{a}\0\0{odd}".encode())  # no final NUL, an empty entry
    assert list(expand(["-"], stdin, null=True)) == [Item(a), Item(odd)]


def test_nul_separated_paths_across_read_chunks() -> None:
    names = [f"dir/{i:06d}-name.png" for i in range(8000)]  # well over one 64 KiB read
    data = b"\0".join(os.fsencode(n) for n in names) + b"\0"
    assert len(data) > 2 * 65536
    assert list(read_paths(io.BytesIO(data), null=True)) == names


def test_stdin_directory_missing_and_glob(tree: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.png")
    stdin = io.BytesIO(f"{tree}\n{missing}\n{tree}/*.png\n".encode())
    items = list(expand(["-"], stdin))
    assert items == [
        *expected_tree(tree),
        Item(missing, "no such file or directory"),
        Item(str(tree / "b.png")),
        Item(str(tree / "m-link.png")),
        Item(str(tree / "z.png")),
    ]


def test_dash_without_stdin() -> None:
    assert list(expand(["-"], None)) == [Item("-", "no standard input to read paths from")]


# -- laziness ------------------------------------------------------------------------------------------------------
def test_directory_walk_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for sub in "abcde":
        (tmp_path / sub).mkdir()
        solid(tmp_path / sub / "img.png")
    real_scandir = os.scandir
    scanned: list[str] = []

    def counting_scandir(path: str) -> object:
        scanned.append(os.path.basename(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    items = expand([str(tmp_path), str(tmp_path / "never-looked-at")])
    assert scanned == []  # nothing happens before the first next()
    assert next(items) == Item(str(tmp_path / "a" / "img.png"))
    assert scanned == [tmp_path.name, "a"]
    assert next(items) == Item(str(tmp_path / "b" / "img.png"))
    assert scanned == [tmp_path.name, "a", "b"]


def test_stdin_is_read_lazily(tmp_path: Path) -> None:
    first = str(solid(tmp_path / "first.png"))

    class OneLineThenFail(io.RawIOBase):
        def __iter__(self) -> Iterator[bytes]:
            yield f"{first}\n".encode()
            raise AssertionError("read past the first path")

    assert next(expand(["-"], OneLineThenFail())) == Item(first)


def test_module_settings(tmp_path: Path) -> None:
    """Pillow's own bomb check stays on at mmcli's limit while pixels are decoded (nested decoders see it);
    images are never loaded leniently."""
    imaging.decode(str(solid(tmp_path / "s.png")), max_pixels=12_345)
    assert Image.MAX_IMAGE_PIXELS == 12_345
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_glob_star_star_never_follows_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    solid(tmp_path / "a" / "b" / "x.png")
    solid(tmp_path / "a" / "y.jpg")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")  # two loops: Python's glob explodes here
    os.symlink(tmp_path, tmp_path / "a" / "up")
    found = [item.input for item in expand([str(tmp_path / "**" / "*.*")])]
    assert found == [str(tmp_path / "a" / "b" / "x.png"), str(tmp_path / "a" / "y.jpg")]
    # a symbolic link named by a plain segment is followed, as glob does
    assert [i.input for i in expand([str(tmp_path / "a" / "up" / "a" / "*.jpg")])] == [
        str(tmp_path / "a" / "up" / "a" / "y.jpg")
    ]


@pytest.mark.parametrize(
    "pattern",
    [
        "*.png",
        "**/*.png",
        "**/*",
        "d*/**/*.jp*g",
        "d1/*/[ab].png",
        "**/sub/**/?.png",
        ".hid/*.png",
        "**/.h*.png",
    ],
)
def test_glob_matches_what_python_glob_matches(tmp_path: Path, pattern: str) -> None:
    import glob

    for name in [
        "top.png", "d1/a.png", "d1/b.png", "d1/c.jpeg", "d1/e/a.png", "d2/sub/x/z.png", "d2/sub/q.png",
        ".hid/h.png", "d1/.hidden.png", "d1/sub/y.jpg",
    ]:  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        solid(tmp_path / name)
    ours = [i.input for i in expand([str(tmp_path / pattern)]) if i.error is None]
    theirs = sorted(p for p in glob.glob(str(tmp_path / pattern), recursive=True) if os.path.isfile(p))
    assert sorted(ours) == theirs


def test_glob_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for d in range(30):
        (tmp_path / f"d{d:02d}").mkdir()
        for i in range(3):
            solid(tmp_path / f"d{d:02d}" / f"{i}.png")
    from mmcli.sources import inputs

    listed: list[str] = []
    real = os.scandir
    monkeypatch.setattr(inputs.os, "scandir", lambda p: listed.append(p) or real(p))
    it = expand([str(tmp_path / "**" / "*.png")])
    assert next(it).input == str(tmp_path / "d00" / "0.png")
    assert len(listed) <= 2  # the root and the first directory, not all 31
