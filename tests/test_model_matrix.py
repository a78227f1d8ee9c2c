"""Every family of the zoo (tests/zoo.py) through the command line, as a user runs it with --model DIR.

For each family and each task it supports (contrastive: classify, embed; generative: caption, vqa,
classify): the command succeeds without torchvision (which is not installed), and one image per batch
gives the same records as three per batch. Where transformers' own pipeline runs the model
(``image-text-to-text``, ``zero-shot-image-classification``), mmcli's captions and scores equal the
pipeline's. The checkpoints are built once per session; three small images are shared by every test.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests import zoo
from tests.conftest import Result

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(family, task) for family, tasks in zoo.FAMILIES.items() for task in tasks]
GENERATIVE = [family for family, tasks in zoo.FAMILIES.items() if "caption" in tasks]
CONTRASTIVE = [family for family, tasks in zoo.FAMILIES.items() if "embed" in tasks]
PROMPT = "What is in the image?"
LABELS = ["cat", "dog", "a red car"]
TEMPLATE = "a photo of {}."
TASK_ARGS = {
    "caption": ["--max-new-tokens", "4"],
    "vqa": ["--question", PROMPT, "--max-new-tokens", "4"],
    "classify": ["--labels", ",".join(LABELS)],
    "embed": [],
}
# transformers' zero-shot pipeline loads "blip" as BlipForImageTextRetrieval, whose heads a BlipModel
# checkpoint does not hold: its scores are not the checkpoint's.
ZERO_SHOT_PIPELINE = [family for family in CONTRASTIVE if family != "blip_itc"]


@pytest.fixture(scope="session")
def zoo_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("zoo")
    return lambda family: zoo.cached(family, root)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three small images of different shapes (so tiles and patch grids differ between them)."""
    root = tmp_path_factory.mktemp("matrix-images")
    paths = []
    for seed, (width, height) in enumerate([(40, 30), (32, 48), (64, 64)]):
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        path = root / f"{seed}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def run(cli: Callable[..., Result], task: str, model: Path, images: list[str], *args: str) -> list[dict]:
    """``mmcli TASK IMAGES --model MODEL ARGS``: its records, after checking it ran cleanly."""
    result = cli(task, *images, "--model", model, *TASK_ARGS[task], *args, "--format", "jsonl", "--no-cache")
    message = result.stderr.strip().splitlines()
    assert result.code == 0, message[0] if message else f"exit status {result.code}"
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    records = result.jsonl()
    assert [r.get("error") for r in records] == [None] * len(records), records
    return records


def test_torchvision_is_not_installed() -> None:
    """The premise of the matrix: every family runs with the CPU torch alone (notes.md)."""
    assert importlib.util.find_spec("torchvision") is None


@pytest.mark.parametrize(("family", "task"), CASES)
def test_batch_of_one_and_of_three_give_the_same_records(
    family: str, task: str, cli: Callable[..., Result], zoo_model: Callable[[str], Path], images: list[str]
) -> None:
    model = zoo_model(family)
    one = run(cli, task, model, images, "--batch-size", "1")
    three = run(cli, task, model, images, "--batch-size", "3")
    assert [r["input"] for r in one] == images
    assert_same_records(one, three)


def assert_same_records(one: list[dict], three: list[dict]) -> None:
    """Texts equal; scores and vectors equal to float precision (padding changes the sums' order)."""
    assert len(one) == len(three)
    for a, b in zip(one, three, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert close(a[key], b[key]), (key, a[key], b[key])


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return bool(a == b)


# -- against transformers' pipelines -------------------------------------------------------------------------
@pytest.mark.parametrize("family", GENERATIVE)
def test_captions_equal_the_image_text_to_text_pipeline(
    family: str, cli: Callable[..., Result], zoo_model: Callable[[str], Path], images: list[str]
) -> None:
    """``mmcli caption --prompt P`` writes what ``pipeline("image-text-to-text")`` writes for P: through the
    chat template where the processor has one, else P as the text beside the image."""
    model = zoo_model(family)
    records = run(cli, "caption", model, images, "--prompt", PROMPT)
    expected = pipeline_captions(model, images)
    assert all(expected), "tiny models must write text, or the comparison proves nothing"
    assert [r["caption"].strip() for r in records] == expected


def pipeline_captions(model: Path, images: list[str]) -> list[str]:
    from transformers import pipeline

    processor = zoo.load_processor(model)
    pipe = pipeline("image-text-to-text", model=str(model), processor=processor)
    out = []
    for path in images:
        image = Image.open(path).convert("RGB")
        if getattr(processor, "chat_template", None):
            turn = {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}],
            }
            result = pipe(
                text=[turn], return_full_text=False, max_new_tokens=4, generate_kwargs={"do_sample": False}
            )
        else:
            result = pipe(
                images=image,
                text=PROMPT,
                return_full_text=False,
                max_new_tokens=4,
                generate_kwargs={"do_sample": False},
            )
        out.append(str(result[0]["generated_text"]).strip())
    return out


@pytest.mark.parametrize("family", ZERO_SHOT_PIPELINE)
def test_scores_equal_the_zero_shot_pipeline(
    family: str, cli: Callable[..., Result], zoo_model: Callable[[str], Path], images: list[str]
) -> None:
    from transformers import pipeline

    model = zoo_model(family)
    records = run(cli, "classify", model, images, "--template", TEMPLATE)
    pipe = pipeline("zero-shot-image-classification", model=str(model))
    for record, path in zip(records, images, strict=True):
        expected = pipe(
            Image.open(path).convert("RGB"), candidate_labels=LABELS, hypothesis_template=TEMPLATE
        )
        ours = record["scores"]
        assert ours.keys() == set(LABELS)
        for item in expected:
            assert math.isclose(ours[item["label"]], item["score"], rel_tol=1e-3, abs_tol=1e-4), (item, ours)
