"""The shapes world (mmcli.testing.shapes) and the bundled models trained on it, asserted by meaning.

The generator must be deterministic and keep to its ranges; the bundled checkpoints (models/shapes-*),
run through the CLI as users run them, must classify, caption and answer rendered images correctly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcli.testing import shapes

ROOT = Path(__file__).resolve().parent.parent
COLOUR_Q = "What color is the shape?"
SHAPE_Q = "What shape is it?"

# Clear cases of the world: medium-sized shapes on canvases of different sizes, aspects and formats.
CASES = [
    ("red", "circle", 160, 120, "png"),
    ("blue", "square", 300, 200, "jpg"),
    ("green", "triangle", 96, 96, "png"),
    ("yellow", "star", 120, 200, "png"),
    ("purple", "star", 400, 300, "jpg"),
    ("orange", "triangle", 640, 480, "png"),
]


# -- the generator ----------------------------------------------------------------------------------
def test_a_seed_always_gives_the_same_scene_and_pixels():
    for seed in (0, 1, 12345, 3_000_000_007):
        a, b = shapes.scene(seed), shapes.scene(seed)
        assert a == b
        assert a.render().tobytes() == b.render().tobytes()
    assert shapes.scene(1) != shapes.scene(2)


def test_scenes_keep_to_the_ranges_of_the_world():
    seen = set()
    for seed in range(1500):
        s = shapes.scene(seed)
        seen.add(s.label)
        assert s.colour in shapes.COLOURS and s.shape in shapes.SHAPES
        assert s.background_name in shapes.BACKGROUNDS
        assert 0.25 <= s.size <= 0.80
        short, long = sorted((s.width, s.height))
        assert 48 <= short <= 768 and long <= 1024 and long / short <= 2.0 + 1e-9
        assert shapes.inside(s), s
        assert min(s.background) >= 190  # a light background
    assert seen == set(shapes.labels()) and len(shapes.labels()) == 24


def test_pinning_a_property_leaves_the_others_alone():
    base = shapes.scene(7)
    pinned = shapes.scene(7, colour="red", shape="circle")
    assert (pinned.colour, pinned.shape) == ("red", "circle")
    assert (pinned.width, pinned.height, pinned.size, pinned.cx, pinned.cy) == (
        base.width,
        base.height,
        base.size,
        base.cx,
        base.cy,
    )


def test_pinning_the_canvas_or_size_keeps_the_shape_inside():
    for seed in range(200):
        s = shapes.scene(seed, width=480, height=240, size=0.8)
        assert (s.width, s.height, s.size) == (480, 240, 0.8) and shapes.inside(s)


@pytest.mark.parametrize("seed", [3, 11, 40])
def test_the_drawn_shape_has_its_colour_size_and_place(seed):
    s = shapes.scene(seed)
    pixels = np.asarray(s.render()).astype(int)
    assert pixels.shape == (s.height, s.width, 3)
    ink = np.abs(pixels - np.array(s.background)).sum(-1) > 60
    ys, xs = np.nonzero(ink)
    extent = max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    assert abs(extent - s.size * min(s.width, s.height)) <= 2.5
    left, top, right, bottom = shapes.bounding_box(s)
    assert xs.min() >= left - 1 and xs.max() <= right + 1 and ys.min() >= top - 1 and ys.max() <= bottom + 1
    solid = np.abs(pixels - np.array(s.fill)).sum(-1) < 12  # antialiased edges aside, the shape is flat
    assert solid.sum() > 0.6 * ink.sum()


def test_render_at_another_size_draws_the_same_scene():
    s = shapes.scene(5, width=400, height=300)
    small = np.asarray(s.render(size=(100, 75)).resize((40, 30), Image.Resampling.BOX)).astype(int)
    large = np.asarray(s.render().resize((40, 30), Image.Resampling.BOX)).astype(int)
    assert np.abs(small - large).mean() < 3


# -- the bundled models, through the CLI ------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, shapes.Scene]]:
    directory = tmp_path_factory.mktemp("shapes")
    truth = {}
    for i, (colour, shape, width, height, fmt) in enumerate(CASES):
        s = shapes.scene(
            900 + i, colour=colour, shape=shape, width=width, height=height, size=0.55, cx=0.5, cy=0.5
        )
        name = f"{i}-{colour}-{shape}.{fmt}"
        image = s.render()
        if fmt == "jpg":
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=80)
            (directory / name).write_bytes(buf.getvalue())
        else:
            image.save(directory / name)
        truth[name] = s
    return directory, truth


def by_name(records: list[dict]) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in records}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shapes_clip_classifies_what_it_sees(cli, rendered):
    directory, truth = rendered
    result = cli(
        "classify", directory, "--model", "shapes-clip", "--labels", ",".join(shapes.labels()), "-f", "jsonl"
    )
    assert result.code == 0, result.stderr
    records = by_name(result.jsonl())
    for name, s in truth.items():
        assert records[name]["label"] == s.label, (name, records[name]["scores"])


def test_shapes_clip_knows_shapes_and_colours_on_their_own(cli, rendered):
    directory, truth = rendered
    shape_labels = ",".join(shapes.SHAPES)
    result = cli("classify", directory, "--model", "shapes-clip", "--labels", shape_labels, "-f", "jsonl")
    assert {n: r["label"] for n, r in by_name(result.jsonl()).items()} == {
        n: s.shape for n, s in truth.items()
    }


@pytest.mark.parametrize("model", ["shapes-blip2", "shapes-llava"])
def test_generative_models_caption_and_answer_with_the_right_words(cli, rendered, model):
    directory, truth = rendered
    captions = cli("caption", directory, "--model", model, "-f", "jsonl")
    assert captions.code == 0, captions.stderr
    for name, record in by_name(captions.jsonl()).items():
        words = record["caption"].lower().replace(".", " ").split()
        assert truth[name].colour in words and truth[name].shape in words, (name, record["caption"])
    answers = cli("vqa", directory, "--model", model, "-Q", COLOUR_Q, "-Q", SHAPE_Q, "-f", "jsonl")
    assert answers.code == 0, answers.stderr
    for record in answers.jsonl():
        s = truth[Path(record["input"]).name]
        expected = s.colour if record["question"] == COLOUR_Q else s.shape
        assert record["answer"].strip().lower() == expected, record


def test_shapes_llava_classifies_by_label_likelihood(cli, rendered):
    directory, truth = rendered
    result = cli(
        "classify", directory, "--model", "shapes-llava", "--labels", ",".join(shapes.labels()), "-f", "jsonl"
    )
    assert result.code == 0, result.stderr
    records = by_name(result.jsonl())
    for name, s in truth.items():
        assert records[name]["label"] == s.label, (name, list(records[name]["scores"].items())[:3])
        assert records[name]["question"] == "What is in this image?"


def test_the_bundled_checkpoints_are_small_safetensors_with_their_processors():
    total = 0
    for name in ("shapes-clip", "shapes-blip2", "shapes-llava"):
        directory = ROOT / "models" / name
        assert (directory / "model.safetensors").is_file()
        assert (directory / "tokenizer.json").is_file() and (directory / "processor_config.json").is_file()
        assert not list(directory.glob("*.bin"))
        total += sum(f.stat().st_size for f in directory.iterdir())
    assert total <= 25 * 2**20
