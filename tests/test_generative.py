"""The generative backends (BLIP-2 with OPT and Flan-T5, LLaVA, LLaVA-NeXT) on tiny real checkpoints.

Each checkpoint is built once per module (config -> save_pretrained) and loaded the way users load one:
``registry.resolve(<dir>)`` reads config.json's model_type, and ``registry.create_backend`` imports the
family's backend. References are transformers' own ``pipeline("image-text-to-text")`` and direct
forward passes of the model.
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

from mmcli.errors import DeviceError, UsageError
from mmcli.modeling import registry, runtime
from mmcli.modeling.backends import vlm
from mmcli.modeling.backends.base import GenerateOptions, LoadOptions
from tests import vlm_common as common
from tests.conftest import built_once
from tests.vlm_common import GREEDY

KINDS = ["blip2-opt", "blip2-t5", "llava", "llava-next"]
pytestmark = pytest.mark.usefixtures("one_thread")
FAMILY = {"blip2-opt": "blip2", "blip2-t5": "blip2", "llava": "llava", "llava-next": "llava"}
# Prompts of different lengths; None is the family's caption prompt.
PROMPTS = [None, "what?", "how many dogs are in this picture?", "is it red?"]
LABELS = ["cat", "a red car", "x", "two small dogs", "the sea"]


def image(seed: int) -> Image.Image:
    """Random pixels; sizes vary so that LLaVA-NeXT tiles them into different numbers of patches."""
    rng = np.random.default_rng(seed)
    width, height = [(48, 40), (32, 70), (80, 30), (40, 40)][seed % 4]
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


IMAGES = [image(seed) for seed in range(8)]


def build(kind: str, directory: Path) -> Path:
    from mmcli.testing import generative as testing_gen

    builders: dict[str, Callable[[Path], Path]] = {
        "blip2-opt": lambda d: testing_gen.build_blip2(d, language="opt"),
        "blip2-t5": lambda d: testing_gen.build_blip2(d, language="t5"),
        "llava": testing_gen.build_llava,
        "llava-next": testing_gen.build_llava_next,
    }
    return builders[kind](directory)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return built_once(tmp_path_factory, build)


one_at_a_time = functools.partial(common.one_at_a_time, images=IMAGES)
batched = functools.partial(common.batched, images=IMAGES)


# -- loading ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_family_detected_from_config_json(kind: str, backend: Callable[[str], Any]) -> None:
    model = backend(kind)
    assert model.spec.family == FAMILY[kind]
    assert model.capabilities == {"generate", "score_text"} == model.spec.capabilities
    assert model.default_prompt("classify") == "What is in this image?"
    assert model.decoder_only == (kind != "blip2-t5")
    assert model.tokenizer.padding_side == ("right" if kind == "blip2-t5" else "left")


def test_prompts_come_from_the_config(backend: Callable[[str], Any]) -> None:
    blip2, llava = backend("blip2-opt"), backend("llava")
    assert blip2.render(None) == "" and blip2.default_prompt("caption") is None
    assert llava.default_prompt("caption") == "Describe this image in one sentence."
    assert blip2.render("what is it?") == "Question: what is it? Answer:"
    assert llava.render(None) == "USER: <image>\nDescribe this image in one sentence. ASSISTANT:"
    assert llava.render("what is it?") == "USER: <image>\nwhat is it? ASSISTANT:"


def test_alias_fields_override_the_family(checkpoint: Callable[[str], Path]) -> None:
    spec = registry.resolve(str(checkpoint("llava")))
    spec = dataclasses.replace(
        spec, family="vlm", options={"chat": False, "prompt_format": "{image} Q: {prompt} A:"}
    )
    model = registry.create_backend(spec, runtime.resolve("cpu", "fp32"), LoadOptions())
    assert type(model).__name__ == "GenericVlmBackend"
    assert model.render("hi") == "<image> Q: hi A:"
    assert model.generate(model.preprocess([IMAGES[0]]), ["hi"], GREEDY)[0]


def test_quantize_is_checked_before_loading(checkpoint: Callable[[str], Path]) -> None:
    spec = registry.resolve(str(checkpoint("llava")))
    spec = dataclasses.replace(spec, checkpoint=str(checkpoint("llava") / "missing"))  # never read
    cpu = runtime.resolve("cpu", "fp32")
    with pytest.raises(DeviceError, match="CUDA"):
        registry.create_backend(spec, cpu, LoadOptions(quantize="4bit"))
    with pytest.raises(UsageError, match="3bit"):
        registry.create_backend(spec, cpu, LoadOptions(quantize="3bit"))


def test_device_map_loads_through_accelerate(checkpoint: Callable[[str], Path], backend: Any) -> None:
    spec = registry.resolve(str(checkpoint("blip2-opt")))
    model = registry.create_backend(spec, runtime.resolve("cpu", "fp32"), LoadOptions(device_map="auto"))
    assert model.device == torch.device("cpu")  # accelerate placed it all on the only device
    assert one_at_a_time(model, PROMPTS[:2]) == one_at_a_time(backend("blip2-opt"), PROMPTS[:2])


# -- generation -------------------------------------------------------------------------------------------
def pipeline_answer(kind: str, directory: Path, img: Image.Image, text: str) -> str:
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=str(directory))
    kwargs: dict[str, Any] = {"generate_kwargs": {"do_sample": False}, "max_new_tokens": 12}
    if kind.startswith("blip2"):
        out = pipe(images=img, text=text, return_full_text=False, **kwargs)
    else:
        chat = [
            {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": text}]}
        ]
        out = pipe(text=chat, return_full_text=False, **kwargs)
    answer: str = out[0]["generated_text"]
    return answer.strip()


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_matches_transformers_pipeline(
    kind: str, backend: Callable[[str], Any], checkpoint: Callable[[str], Path]
) -> None:
    model = backend(kind)
    for img, prompt in [(IMAGES[0], None), (IMAGES[1], "what is it?")]:
        ours = model.generate(model.preprocess([img]), [prompt], GREEDY)[0]
        # BLIP-2's pipeline takes the formatted prompt; LLaVA's the user message, which the chat template wraps
        text = model.render(prompt) if kind.startswith("blip2") else model.prompt_text(prompt)
        assert ours, "tiny models must write text, or the comparison proves nothing"
        assert ours == pipeline_answer(kind, checkpoint(kind), img, text)


@pytest.mark.parametrize("kind", KINDS)
def test_batches_give_the_answers_of_single_images(kind: str, backend: Callable[[str], Any]) -> None:
    model = backend(kind)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(8)]
    single = one_at_a_time(model, prompts)
    assert all(single) and len(set(single)) > 2, single
    for size in (1, 3, 8):
        assert batched(model, prompts[:size]) == single[:size]


@pytest.mark.parametrize("kind", KINDS)
def test_only_new_tokens_are_decoded(kind: str, backend: Callable[[str], Any]) -> None:
    model = backend(kind)
    options = GenerateOptions(max_new_tokens=5)
    for text in batched(model, ["Question Answer ASSISTANT USER", None, "what is it?"], options):
        # each tiny-vocabulary token is one character; prompts are longer than 5 characters
        assert 0 < len(text) <= 5, text
        assert "Question" not in text and "ASSISTANT" not in text


@pytest.mark.parametrize("kind", ["blip2-opt", "llava-next"])
def test_preprocess_is_thread_safe(kind: str, backend: Callable[[str], Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = backend(kind)
    images = IMAGES * 3
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda img: model.preprocess([img]), images))
    for img, batch in zip(images, threaded, strict=True):
        expected = model.preprocess([img])
        assert batch.keys() == expected.keys()
        assert all(torch.equal(batch[k], expected[k]) for k in batch)


def test_llava_next_images_take_different_numbers_of_tokens(backend: Callable[[str], Any]) -> None:
    model = backend("llava-next")
    batch = model.collate([model.preprocess([img]) for img in IMAGES[:3]])
    lengths = (batch["image_tokens"] >= 0).sum(dim=1).tolist()
    assert len(set(lengths)) == 3, lengths
    assert batch["pixel_values"].shape[0] == 3 and batch["image_sizes"].shape == (3, 2)


@pytest.mark.parametrize("kind", ["blip2-opt", "llava"])
def test_seeded_sampling_is_reproducible(kind: str, backend: Callable[[str], Any]) -> None:
    common.seeded_sampling_is_reproducible(backend(kind), IMAGES[:2])


@pytest.mark.parametrize("kind", ["blip2-opt", "blip2-t5", "llava"])
def test_beam_search(kind: str, backend: Callable[[str], Any]) -> None:
    model = backend(kind)
    options = GenerateOptions(max_new_tokens=6, num_beams=3)
    out = batched(model, [None, "what?", "how many dogs are in this picture?"], options)
    assert all(0 < len(text) <= 6 for text in out)
    assert out == one_at_a_time(model, [None, "what?", "how many dogs are in this picture?"], options)


# -- label scoring ----------------------------------------------------------------------------------------
def direct_scores(kind: str, model: Any, img: Image.Image, question: str, labels: list[str]) -> list[float]:
    """Each label separately: one full forward of image + prompt + label, log_softmax, gather, mean."""
    processor, net = model.processor, model.model
    if kind.startswith("blip2"):
        prompt = f"Question: {question} Answer:" if question else ""
    else:
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    out = []
    with torch.no_grad():
        for label in labels:
            if kind == "blip2-t5":
                inputs = processor(images=[img], text=[prompt], return_tensors="pt")
                target = processor.tokenizer(label, add_special_tokens=False, return_tensors="pt").input_ids
                logits = net(**inputs, labels=target).logits[0]
            else:
                joined = f"{prompt} {label}" if prompt else label
                inputs = processor(images=[img], text=[joined], return_tensors="pt")
                start = processor(images=[img], text=[prompt], return_tensors="pt").input_ids.shape[1]
                target = inputs.input_ids[:, start:]
                logits = net(**inputs).logits[0, start - 1 : -1]
            logp = logits.log_softmax(-1).gather(-1, target[0].unsqueeze(-1))
            out.append(logp.mean().item())
    return out


SCORED = [
    ("blip2-opt", "what is it?"),
    ("blip2-opt", ""),  # caption mode: labels continue the image alone
    ("blip2-t5", "what is it?"),
    ("llava", "What is this?"),
    ("llava-next", "What is this?"),
]


@pytest.mark.parametrize(("kind", "question"), SCORED)
def test_label_scores_match_full_forward_passes(
    kind: str, question: str, backend: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vlm, "LABEL_CHUNK", 2)  # several chunks per image, the last one short
    model = backend(kind)
    images = IMAGES[:3]
    scores = model.score_labels(model.collate([model.preprocess([i]) for i in images]), question, LABELS)
    assert scores.shape == (3, len(LABELS)) and scores.dtype == torch.float32
    expected = torch.tensor([direct_scores(kind, model, img, question, LABELS) for img in images])
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)


def test_label_tokens_follow_the_prompt_exactly(backend: Callable[[str], Any]) -> None:
    """Llama's tokenizer must not put a stray '▁' between the prompt and the label."""
    model = backend("llava")
    text = model.render("What is this?")
    prompt_ids = model.text_ids(text)
    (cat,) = model.label_ids(text, prompt_ids, ["cat"])
    assert model.tokenizer.convert_ids_to_tokens(cat) == ["▁", "c", "a", "t"]
    with pytest.raises(UsageError, match="empty"):
        model.label_ids(text, prompt_ids, [" "])


def test_long_prefixes_score_fewer_labels_at_once(
    backend: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = backend("llava")
    batch = model.preprocess(IMAGES[:1])
    whole = model.score_labels(batch, "What is this?", LABELS)
    monkeypatch.setattr(vlm, "CACHE_BUDGET", 1)  # one label per chunk
    torch.testing.assert_close(model.score_labels(batch, "What is this?", LABELS), whole, atol=1e-5, rtol=0)
