"""The generic image-text-to-text family (``vlm``) on tiny real Qwen2-VL, Qwen2.5-VL, Idefics2, Idefics3
(SmolVLM) and Gemma 3 checkpoints, and on LLaVA as a cross-check against its own backend.

None lays its image out as LLaVA does: Qwen2-VL flattens patches and passes ``image_grid_thw`` (positions
are 3-D rotary), Idefics3 splits images into tiles with a ``pixel_attention_mask`` and a number of image
tokens that varies per image, Idefics2 resamples each image to a fixed number of latents, and Gemma 3's
chat template starts with BOS while its image tokens attend to each other through ``token_type_ids``.
Each checkpoint is built offline, found by its config.json model_type through ``registry.resolve(<dir>)``
and loaded through ``registry.create_backend``, as ``--model <dir>`` would. References are transformers'
``pipeline("image-text-to-text")`` and direct forward passes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mmcli.errors import DeviceError
from mmcli.modeling import registry, runtime
from mmcli.modeling.backends import generic
from mmcli.modeling.backends.base import LoadOptions
from tests import vlm_common as common
from tests.conftest import built_once
from tests.vlm_common import GREEDY

KINDS = ["qwen2_vl", "qwen2_5_vl", "idefics2", "idefics3", "gemma3"]
pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = [None, "what?", "how many dogs are in this picture?", "is it red?", "x"]
LABELS = ["cat", "a red car", "x", "two small dogs", "the sea"]


def image(seed: int) -> Image.Image:
    """Random pixels; sizes vary so that images take different numbers of patches and tiles."""
    rng = np.random.default_rng(seed)
    width, height = [(48, 40), (32, 70), (80, 30), (40, 40), (20, 90)][seed % 5]
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


IMAGES = [image(seed) for seed in range(5)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    from mmcli.testing import generative as testing_gen
    from mmcli.testing import vlm as testing_vlm

    builders: dict[str, Callable[[Path], Path]] = {
        "qwen2_vl": testing_vlm.build_qwen2_vl,
        "qwen2_5_vl": lambda d: testing_vlm.build_qwen2_vl(d, version="2.5"),
        "idefics2": testing_vlm.build_idefics2,
        "idefics3": testing_vlm.build_idefics3,
        "gemma3": testing_vlm.build_gemma3,
        "llava": testing_gen.build_llava,
    }
    testing_vlm.register_image_only_processors()  # without torchvision: Qwen's processors minus their video half
    return built_once(tmp_path_factory, lambda kind, out: builders[kind](out))


one_at_a_time = functools.partial(common.one_at_a_time, images=IMAGES)
batched = functools.partial(common.batched, images=IMAGES)


# -- loading ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_model_type_maps_to_the_generic_family(kind: str, backend: Callable[[str], Any]) -> None:
    model = backend(kind)
    assert model.spec.family == "vlm" and model.spec.model_type == kind
    assert isinstance(model, generic.GenericVlmBackend)
    assert model.capabilities == {"generate", "score_text"} == model.spec.capabilities
    assert model.default_prompt("classify") == "What is in this image?"
    assert model.tokenizer.padding_side == "left"


def test_device_map_and_quantize(checkpoint: Callable[[str], Path], backend: Callable[[str], Any]) -> None:
    spec = registry.resolve(str(checkpoint("idefics3")))
    cpu = runtime.resolve("cpu", "fp32")
    model = registry.create_backend(spec, cpu, LoadOptions(device_map="auto"))
    assert model.device == torch.device("cpu")  # accelerate placed it all on the only device
    assert one_at_a_time(model, PROMPTS[:2]) == one_at_a_time(backend("idefics3"), PROMPTS[:2])
    missing = dataclasses.replace(spec, checkpoint=str(checkpoint("idefics3") / "missing"))  # never read
    with pytest.raises(DeviceError, match="CUDA"):
        registry.create_backend(missing, cpu, LoadOptions(quantize="4bit"))


def test_batches_carry_the_images(backend: Callable[[str], Any]) -> None:
    model = backend("idefics3")
    parts = [model.preprocess([img]) for img in IMAGES[:3]]
    assert [len(part["images"]) for part in parts] == [1, 1, 1]
    assert model.collate(parts)["images"] == IMAGES[:3]
    assert model.preprocess([IMAGES[0].convert("L")])["images"][0].mode == "RGB"


def test_prompts_go_through_the_chat_template(backend: Callable[[str], Any]) -> None:
    qwen, idefics = backend("qwen2_vl"), backend("idefics3")
    assert (
        idefics.render("what is it?") == "<|im_start|>User:<image>what is it?<end_of_utterance>\nAssistant:"
    )
    assert qwen.render(None).endswith(
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Describe this image in one sentence.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_idefics3_images_take_different_numbers_of_tokens(backend: Callable[[str], Any]) -> None:
    model = backend("idefics3")
    text = model.render("what?")
    lengths = {int(model.inputs([img], [text], "left")["input_ids"].shape[1]) for img in IMAGES[:3]}
    assert len(lengths) > 1, lengths


# -- generation -------------------------------------------------------------------------------------------
def pipeline_answer(directory: Path, img: Image.Image, text: str) -> str:
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=str(directory))
    chat = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": text}]}]
    out = pipe(text=chat, return_full_text=False, max_new_tokens=12, generate_kwargs={"do_sample": False})
    answer: str = out[0]["generated_text"]
    return answer.strip()


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_matches_transformers_pipeline(
    kind: str, backend: Callable[[str], Any], checkpoint: Callable[[str], Path]
) -> None:
    model = backend(kind)
    for img, prompt in [(IMAGES[0], None), (IMAGES[1], "what is it?")]:
        ours = model.generate(model.preprocess([img]), [prompt], GREEDY)[0]
        assert ours, "tiny models must write text, or the comparison proves nothing"
        assert ours == pipeline_answer(checkpoint(kind), img, model.prompt_text(prompt))


@pytest.mark.parametrize("kind", KINDS)
def test_batches_give_the_answers_of_single_images(kind: str, backend: Callable[[str], Any]) -> None:
    model = backend(kind)
    single = one_at_a_time(model, PROMPTS)
    assert all(single) and len(set(single)) > 2, single
    for size in (1, 3, 5):
        assert batched(model, PROMPTS[:size]) == single[:size]


@pytest.mark.parametrize("kind", KINDS)
def test_raw_prompts_skip_the_question_template(kind: str, checkpoint: Callable[[str], Path]) -> None:
    spec = registry.resolve(str(checkpoint(kind)))
    spec = dataclasses.replace(spec, options={"question_template": "Q: {}"})
    model = registry.create_backend(spec, runtime.resolve("cpu", "fp32"), LoadOptions())
    assert "Q: hi" in model.render("hi") and "Q: hi" not in model.render("hi", raw=True)
    raw = model.generate(
        model.preprocess([IMAGES[0]]), ["Q: hi"], dataclasses.replace(GREEDY, raw_prompts=True)
    )
    assert raw == model.generate(model.preprocess([IMAGES[0]]), ["hi"], GREEDY)


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_sampling_is_reproducible(kind: str, backend: Callable[[str], Any]) -> None:
    common.seeded_sampling_is_reproducible(backend(kind), IMAGES[:2])


# -- label scoring ----------------------------------------------------------------------------------------
def direct_scores(model: Any, img: Image.Image, question: str, labels: list[str]) -> list[float]:
    """Each label separately: one full forward of image + prompt + label, log_softmax, gather, mean."""
    processor, net = model.processor, model.model
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    start = processor(images=[[img]], text=[prompt], return_tensors="pt").input_ids.shape[1]
    sep = "" if prompt[-1].isspace() else " "  # Qwen2-VL's generation prompt ends in a newline
    out = []
    with torch.no_grad():
        for label in labels:
            inputs = processor(images=[[img]], text=[prompt + sep + label], return_tensors="pt")
            target = inputs.input_ids[0, start:]
            logits = net(**inputs).logits[0, start - 1 : -1]
            out.append(logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).mean().item())
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_label_scores_match_full_forward_passes(
    kind: str, backend: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generic, "LABEL_CHUNK", 2)  # several chunks per image, the last one short
    model = backend(kind)
    images = IMAGES[:3]
    scores = model.score_labels(
        model.collate([model.preprocess([i]) for i in images]), "What is this?", LABELS
    )
    assert scores.shape == (3, len(LABELS)) and scores.dtype == torch.float32
    expected = torch.tensor([direct_scores(model, img, "What is this?", LABELS) for img in images])
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)
    assert len({tuple(row.tolist()) for row in scores}) == 3, "scores must depend on the image"


# -- the command line -------------------------------------------------------------------------------------
def test_caption_through_the_cli(
    cli: Callable[..., Any], checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    paths = []
    for i, img in enumerate(IMAGES[:3]):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    args = [
        "caption",
        *paths,
        "--model",
        checkpoint("idefics3"),
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
    ]
    result = cli(*args, "--format", "jsonl")
    assert result.code == 0, result.stderr
    records = result.jsonl()
    assert [r["input"] for r in records] == [str(p) for p in paths]
    assert all(r["caption"] for r in records), records
    assert records[0]["prompt"] == "Describe this image in one sentence."


# -- LLaVA through the generic backend agrees with LlavaBackend -------------------------------------------
def llava_pair(checkpoint: Callable[[str], Path], **options: Any) -> tuple[Any, Any]:
    spec = registry.resolve(str(checkpoint("llava")))
    cpu = runtime.resolve("cpu", "fp32")
    ours = registry.create_backend(
        dataclasses.replace(spec, family="vlm", options=options), cpu, LoadOptions()
    )
    theirs = registry.create_backend(dataclasses.replace(spec, options=options), cpu, LoadOptions())
    assert type(ours).__name__ == "GenericVlmBackend" and type(theirs).__name__ == "LlavaBackend"
    return ours, theirs


def test_llava_answers_and_scores_agree_with_its_own_backend(checkpoint: Callable[[str], Path]) -> None:
    ours, theirs = llava_pair(checkpoint)
    prompts = PROMPTS[:3]
    expected = batched(theirs, prompts)
    assert all(expected)
    assert batched(ours, prompts) == expected
    batch = [model.collate([model.preprocess([img]) for img in IMAGES[:2]]) for model in (ours, theirs)]
    torch.testing.assert_close(
        ours.score_labels(batch[0], "What is this?", LABELS),
        theirs.score_labels(batch[1], "What is this?", LABELS),
        atol=1e-4,
        rtol=0,
    )


def test_prompt_format_without_chat_template(checkpoint: Callable[[str], Path]) -> None:
    ours, theirs = llava_pair(checkpoint, chat=False, prompt_format="{image} Q: {prompt} A:")
    assert ours.render("hi") == theirs.render("hi") == "<image> Q: hi A:"
    assert batched(ours, ["hi", "what?"]) == batched(theirs, ["hi", "what?"])
