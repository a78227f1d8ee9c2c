"""--view, --tiles, --pool, --tta: the model view unchanged, letterboxing that cuts nothing, tiles that cover
every pixel, scores pooled and voted as documented, the cache and resume keys per view, the same records
through ``mmcli serve``, and one-line usage errors."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcli.modeling import pooling, views
from mmcli.modeling.views import View
from mmcli.testing import shapes

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
LABELS = SAMPLES / "shapes-labels.txt"
CLIP = ("--model", "shapes-clip", "--labels-file", str(LABELS))


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three wide canvases with a small shape each (7-10 % of the shorter side), and one ordinary scene."""
    root = tmp_path_factory.mktemp("small-shapes")
    for i, (w, h) in enumerate([(640, 480), (900, 500), (480, 640)]):
        shapes.scene(5_000 + i, width=w, height=h, size=0.07 + 0.015 * i).render().save(root / f"s{i}.png")
    shapes.scene(5_100, width=200, height=150, size=0.6).render().save(root / "ordinary.png")
    return root


@pytest.fixture(scope="module")
def cropping_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP whose processor resizes the shorter side and centre-crops, as real CLIP checkpoints do."""
    from mmcli.testing.contrastive import build_clip

    return build_clip(tmp_path_factory.mktemp("cropping-clip"), image_size=64, crop=True)


def backend_of(checkpoint: Path | str):
    from mmcli.modeling import registry, runtime
    from mmcli.modeling.backends.base import LoadOptions

    spec = registry.resolve(str(checkpoint), None)
    return registry.create_backend(spec, runtime.resolve("cpu", "fp32", spec.dtype), LoadOptions())


# -- the model view ---------------------------------------------------------------------------------------
def test_view_model_writes_the_records_of_no_view_and_of_the_pipeline(cli, tiny_clip, image_dir) -> None:
    from transformers import pipeline

    args = ("classify", str(image_dir), "--labels", "cat,dog,bird", "--model", str(tiny_clip), "-f", "jsonl")
    plain, model = cli(*args), cli(*args, "--view", "model", "--tta", "1")
    assert plain.code == model.code == 0, model.stderr
    assert model.stdout == plain.stdout
    first = model.jsonl()[0]
    expected = pipeline("zero-shot-image-classification", model=str(tiny_clip))(
        first["input"], candidate_labels=["cat", "dog", "bird"], hypothesis_template="a photo of a {}."
    )
    assert first["scores"] == {e["label"]: pytest.approx(e["score"], abs=1e-5) for e in expected}


# -- pad ----------------------------------------------------------------------------------------------------
def fill_pixels(pixels: np.ndarray, fill: tuple[int, int, int], mean, std) -> int:
    """Pixels of a processed (3, H, W) input within 40 levels of ``fill`` in every channel."""
    rgb = (pixels * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]) * 255
    return int((np.abs(rgb - np.asarray(fill)[:, None, None]) < 40).all(axis=0).sum())


EDGES = [(1200, 400, "right"), (1200, 400, "left"), (400, 1200, "bottom"), (400, 1200, "top")]


@pytest.mark.parametrize(("width", "height", "edge"), EDGES)
def test_pad_keeps_a_shape_at_the_edge_of_a_wide_canvas(cropping_clip, width, height, edge) -> None:
    backend = backend_of(cropping_clip)
    half = 0.8 * min(width, height) / 2 + 1  # the shape's bounding box touches the edge (within a pixel)
    where = {
        "right": {"cx": 1 - half / width},
        "left": {"cx": half / width},
        "bottom": {"cy": 1 - half / height},
        "top": {"cy": half / height},
    }[edge]
    scene = shapes.scene(11, width=width, height=height, size=0.8, colour="red", **where)
    assert shapes.inside(scene)
    image = scene.render()
    processor = backend.processor.image_processor
    stats = processor.image_mean, processor.image_std
    cropped = backend.preprocess([image])["pixel_values"][0].numpy()
    padded = views.preprocess(View("pad"), backend, [image])["pixel_values"][0].numpy()
    side = backend.input_size()
    scale = side / max(width, height)
    whole = scene.render(size=(round(width * scale), round(height * scale)))
    expected = int((np.abs(np.asarray(whole, dtype=int) - scene.fill) < 40).all(axis=-1).sum())
    assert expected > 20
    assert fill_pixels(padded, scene.fill, *stats) >= 0.9 * expected  # the whole shape is there
    assert fill_pixels(cropped, scene.fill, *stats) == 0  # the centre crop cut it off


def test_pad_fills_with_the_colour_of_the_image_border() -> None:
    image = Image.new("RGB", (300, 100), (10, 200, 30))
    image.paste((250, 0, 0), (140, 40, 160, 60))
    padded = views.pad(image, 64)
    assert padded.size == (64, 64)
    assert padded.getpixel((0, 0)) == padded.getpixel((63, 63)) == (10, 200, 30)


# -- tiles --------------------------------------------------------------------------------------------------
def test_tiles_cover_every_pixel_and_are_never_smaller_than_the_model_input() -> None:
    sizes = [
        (w, h) for w in (1, 2, 63, 64, 65, 97, 130, 257, 640, 1201, 4000) for h in (1, 48, 129, 480, 3001)
    ]
    for width, height in sizes:
        for native, grid in [(64, (0, 0)), (224, (0, 0)), (32, (0, 0)), (64, (3, 5)), (64, (16, 1))]:
            boxes = views.tile_boxes(width, height, native, *grid)
            if not boxes:  # the global view alone: a 1x1 grid
                assert views.grid(width, height, native, *grid) == (1, 1)
                continue
            covered = np.zeros((height, width), dtype=bool)
            for left, top, right, bottom in boxes:
                assert 0 <= left < right <= width and 0 <= top < bottom <= height
                covered[top:bottom, left:right] = True
            assert covered.all(), (width, height, native, grid)
            if grid == (0, 0):
                rows, cols = views.grid(width, height, native)
                assert min(rows, cols) <= views.AUTO_TILES
                assert all(min(x1 - x0, y1 - y0) >= native for x0, y0, x1, y1 in boxes), (
                    width,
                    height,
                    native,
                )


def test_the_tile_grid_follows_the_image_size() -> None:
    assert views.grid(640, 480, 64) == (4, 5)  # four across the shorter side, about square
    assert views.grid(480, 1200, 64) == (10, 4)
    assert views.grid(640, 480, 224) == (2, 3)  # CLIP's 224 px: fewer, none upscaled
    assert views.grid(1200, 600, 224) == (3, 6)
    assert views.grid(100, 100, 64) == (1, 1)  # the global view is enough
    assert views.grid(640, 480, 64, 2, 3) == (2, 3)  # --tiles 2x3


def test_tiles_find_a_small_shape_the_model_view_misses(cli, small_shapes) -> None:
    args = ("classify", str(small_shapes / "s0.png"), *CLIP, "-f", "jsonl", "--no-cache")
    model, tiles = cli(*args).jsonl()[0], cli(*args, "--view", "tiles").jsonl()[0]
    truth = shapes.scene(5_000, width=640, height=480, size=0.07).label
    assert tiles["label"] == truth != model["label"]
    assert next(iter(tiles["scores"])) == tiles["label"] and tiles["score"] == tiles["scores"][truth]


def test_tiles_share_batches_split_per_image_and_survive_out_of_memory(
    cli, small_shapes, monkeypatch
) -> None:
    import torch

    from mmcli.modeling.backends.clip import ClipBackend

    args = ("classify", str(small_shapes), *CLIP, "--view", "tiles", "-f", "jsonl", "--no-cache")
    one = cli(*args, "-b", "1").jsonl()
    rows: list[int] = []
    original = ClipBackend.encode_images

    def small_memory(self, batch):
        rows.append(batch["pixel_values"].shape[0])
        if rows[-1] > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return original(self, batch)

    monkeypatch.setattr(ClipBackend, "encode_images", small_memory)
    result = cli(*args, "-b", "4")
    assert result.code == 0, result.stderr
    assert "out of memory with a batch of 4: retrying in batches of 2" in result.stderr
    assert rows[0] > 4  # a batch of 4 images held all their tiles
    got = result.jsonl()
    assert [r["input"] for r in got] == [r["input"] for r in one]
    for a, b in zip(got, one, strict=True):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_embed_with_tiles_gives_one_unit_vector_per_image(cli, small_shapes) -> None:
    plain = cli("embed", str(small_shapes / "s1.png"), "--model", "shapes-clip", "-f", "jsonl").jsonl()[0]
    tiled = cli(
        "embed", str(small_shapes / "s1.png"), "--model", "shapes-clip", "-f", "jsonl", "--view", "tiles"
    )
    vector = np.asarray(tiled.jsonl()[0]["embedding"])
    assert vector.shape == (len(plain["embedding"]),)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(vector, plain["embedding"])


# -- pooling and voting -------------------------------------------------------------------------------------
def test_mean_pool_lets_one_strong_tile_count_without_outvoting_the_whole_image() -> None:
    scale = 20.0
    same = pooling.pool(np.array([[0.3, 0.3, 0.3]]), scale, "mean")
    assert same[0] == pytest.approx(0.3)
    # label 0: only the global view sees it well; label 1: one of four tiles sees it a little better
    cos = np.array([[0.9, 0.2, 0.2, 0.2, 0.2], [0.3, 0.95, 0.2, 0.2, 0.2]])
    assert pooling.pool(cos, scale, "max").argmax() == 1
    assert pooling.pool(cos, scale, "mean").argmax() == 0
    # a small object: the global view sees nothing, one tile sees it clearly
    cos = np.array([[0.45, 0.3, 0.3, 0.3, 0.3], [0.35, 0.9, 0.3, 0.3, 0.3]])
    assert pooling.pool(cos, scale, "mean").argmax() == 1


def test_pooled_scores_for_a_text_query_are_the_pooled_cosines() -> None:
    rng = np.random.default_rng(0)
    targets = [rng.normal(size=(n, 8)).astype(np.float32) for n in (1, 5, 3)]
    query = rng.normal(size=(1, 8)).astype(np.float32)
    for how in ("mean", "max"):
        got = pooling.pooled_scores([query], targets, 30.0, how)[0]
        expected = [float(pooling.pool((t @ query.T)[:, 0], 30.0, how)) for t in targets]
        assert got == pytest.approx(expected, abs=1e-5)


def test_zero_votes_among_the_most_confident_views() -> None:
    confident_b = [0.02, 0.96, 0.02]
    unsure_a = [0.5, 0.3, 0.2]
    probs = np.array([confident_b, confident_b] + [unsure_a] * 18)
    order, mean = pooling.zero_vote(probs)  # keeps 2 of 20: both vote b
    assert order[0] == 1 and mean == pytest.approx(confident_b)
    order, _ = pooling.zero_vote(np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]]), keep=1.0)
    assert order == [1, 0]  # two votes to one, whatever the means


def test_tta_records_rank_by_the_vote_and_are_reproducible(cli, small_shapes) -> None:
    args = ("classify", str(small_shapes / "ordinary.png"), *CLIP, "-f", "jsonl", "--no-cache")
    voted = cli(*args, "--tta", "10")
    assert voted.code == 0, voted.stderr
    record = voted.jsonl()[0]
    assert record["label"] == shapes.scene(5_100, width=200, height=150, size=0.6).label
    assert (
        next(iter(record["scores"])) == record["label"]
        and record["score"] == record["scores"][record["label"]]
    )
    assert cli(*args, "--tta", "10").stdout == voted.stdout
    averaged = cli(*args, "--tta", "10", "--tta-combine", "mean").jsonl()[0]
    assert averaged["scores"] != record["scores"]
    assert views.augment(Image.new("RGB", (50, 40)), 0).size == (50, 40)
    copies = [views.augment(Image.new("RGB", (100, 80)), i).size for i in range(1, 6)]
    assert all(80 <= w <= 100 and 64 <= h <= 80 for w, h in copies) and len(set(copies)) > 1


# -- keys ---------------------------------------------------------------------------------------------------
def test_the_cache_namespace_and_the_resume_key_change_with_the_view(cli, small_shapes, tmp_path) -> None:
    from mmcli.commands.classify import ContrastiveClassify
    from mmcli.commands.embed import Embed
    from mmcli.modeling import registry, runtime
    from mmcli.run.task import cache_namespace

    spec, rt = registry.resolve("shapes-clip", None), runtime.resolve("cpu", "fp32", "fp32")
    seen = [None, View("squash"), View("pad"), View("tiles"), View("tiles", 2, 3), View(tta=4)]
    tasks = [ContrastiveClassify(["a"], None, None, None, False, 0.5, view=v) for v in seen]
    spaces = [cache_namespace(spec, rt, task) for task in tasks]
    spaces.append(cache_namespace(spec, rt, Embed([], True, View("tiles"))))  # averaged: not the views
    assert len(set(spaces)) == len(spaces)
    assert spaces[0] == cache_namespace(spec, rt)  # the model view keeps the namespace it always had
    assert len({json.dumps(t.options_key()) for t in tasks}) == len(tasks)

    def hits(*extra: str) -> int:
        summary = tmp_path / "summary.json"
        result = cli(
            "classify", str(small_shapes), *CLIP, "-f", "jsonl", "--summary-json", str(summary), *extra
        )
        assert result.code == 0, result.stderr
        return int(json.loads(summary.read_text())["cache_hits"])

    assert hits("--view", "pad") == 0
    assert hits("--view", "pad") == 4
    assert hits("--view", "squash") == 0
    assert hits("--view", "tiles") == 0
    assert hits("--view", "tiles") == 4


def test_a_view_travels_to_a_server_as_json() -> None:
    from mmcli.commands.classify import ContrastiveClassify
    from mmcli.run.remote import wire

    task = ContrastiveClassify(["a", "b"], None, None, 2, False, 0.5, view=View("tiles", 2, 3, "max"))
    back = wire.decode(json.loads(json.dumps(wire.encode(task))))
    assert back.view == task.view and back.options_key() == task.options_key()


# -- through mmcli serve --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[object]:
    from tests.test_serve import start_server

    base = Path(tempfile.mkdtemp(prefix="mmcli-views-"))
    srv = start_server(base / "run", "--keep-alive", "30s")
    yield srv
    srv.stop()
    shutil.rmtree(base, ignore_errors=True)


SERVED = [
    ("classify", *CLIP, "--view", "tiles", "--top-k", "3"),
    ("classify", *CLIP, "--tta", "6"),
    ("compare", "--model", "shapes-clip", "--text", "a photo of a red star.", "--view", "tiles"),
    ("embed", "--model", "shapes-clip", "--view", "tiles"),
]


@pytest.mark.parametrize("args", SERVED, ids=lambda a: f"{a[0]}-{a[-1]}")
def test_views_through_the_server_give_the_records_of_the_process(
    server, cli, small_shapes, monkeypatch, args
):
    monkeypatch.setenv("MMCLI_SOCKET", str(server.sock))
    command = (args[0], str(small_shapes), *args[1:], "-f", "jsonl", "--no-cache")
    served, local = cli(*command), cli(*command, "--no-server")
    assert served.code == local.code == 0, served.stderr + local.stderr
    assert "via server (pid" in served.stderr
    assert served.jsonl() == local.jsonl() and served.jsonl()


# -- usage errors -----------------------------------------------------------------------------------------------
ERRORS = [
    (("classify", *CLIP, "--view", "tiles", "--tiles", "0x3"), "--tiles 0x3"),
    (("classify", *CLIP, "--view", "tiles", "--tiles", "two"), "ROWSxCOLUMNS"),
    (("classify", *CLIP, "--tiles", "2x2"), "--tiles is for --view tiles"),
    (
        ("classify", "--model", "shapes-llava", "--labels", "a,b", "--view", "tiles"),
        "shapes-llava is generative",
    ),
    (("classify", "--model", "shapes-blip2", "--labels", "a,b", "--tta", "4"), "is for contrastive models"),
    (("classify", *CLIP, "--pool", "max"), "--pool combines tiles"),
    (("classify", *CLIP, "--view", "tiles", "--pool", "median"), "choose mean or max"),
    (("classify", *CLIP, "--tta", "0"), "--tta 0"),
    (("classify", *CLIP, "--tta-combine", "mean"), "--tta-combine needs --tta 2"),
    (("classify", *CLIP, "--view", "tiles", "--tta", "4"), "cannot be used together"),
    (("classify", *CLIP, "--view", "crop"), "--view crop: choose model"),
    (("embed", "--model", "shapes-clip", "--view", "tiles", "--pool", "max"), "one vector per image"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[e[1] for e in ERRORS])
def test_view_mistakes_are_one_line_usage_errors(cli, args, message) -> None:
    result = cli(args[0], str(SAMPLES / "shapes-red-circle.png"), *args[1:])
    assert result.code == 2
    assert result.stderr.startswith("mmcli: error:") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
