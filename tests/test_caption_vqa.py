"""caption, vqa and generative classify through the CLI, on tiny real BLIP-2 and LLaVA checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tests.conftest import run_mmcli

MODELS = ["tiny_blip2", "tiny_llava"]


def _paths(image_dir):
    return [str(image_dir / n) for n in ("a.jpg", "b.png", "c.webp", "sub/d.jpg", "sub/e.bmp")]


def _backend(model_dir):
    from mmcli.modeling import registry, runtime
    from mmcli.modeling.backends.base import LoadOptions

    return registry.create_backend(
        registry.resolve(str(model_dir)), runtime.resolve("cpu", "fp32"), LoadOptions()
    )


def _one_at_a_time(model_dir, paths, prompt, raw):
    from mmcli.modeling.backends.base import GenerateOptions

    backend = _backend(model_dir)
    options = GenerateOptions(max_new_tokens=12, raw_prompts=raw)
    out = []
    for path in paths:
        batch = backend.preprocess([Image.open(path).convert("RGB")])
        out += backend.generate(batch, [prompt], options)
    return out


@pytest.mark.parametrize("fixture", MODELS)
def test_caption_batched_equals_one_at_a_time(cli, request, image_dir, fixture):
    model = request.getfixturevalue(fixture)
    paths = _paths(image_dir)
    result = cli("caption", *paths, "--model", model, "--max-new-tokens", "12", "--batch-size", "3")
    assert result.code == 0, result.stderr
    records = result.jsonl()
    assert [r["input"] for r in records] == paths
    assert [r["caption"] for r in records] == _one_at_a_time(model, paths, None, raw=True)
    assert all(r["caption"] for r in records)
    expected_prompt = None if fixture == "tiny_blip2" else "Describe this image in one sentence."
    assert {r["prompt"] for r in records} == {expected_prompt}


def test_caption_prompt_is_given_to_the_model_as_is(cli, tiny_blip2, image_dir):
    paths = _paths(image_dir)[:2]
    result = cli("caption", *paths, "--model", tiny_blip2, "--prompt", "a photo of", "--max-new-tokens", "12")
    records = result.jsonl()
    assert [r["caption"] for r in records] == _one_at_a_time(tiny_blip2, paths, "a photo of", raw=True)
    assert records[0]["prompt"] == "a photo of"


def test_caption_sidecars_are_written_beside_each_image(cli, tiny_llava, tmp_path):
    from tests.conftest import random_image

    for name in ("one.jpg", "two.png"):
        random_image(len(name), (40, 30)).save(tmp_path / name)
    (tmp_path / "bad.jpg").write_text("x")
    result = cli("caption", tmp_path, "--model", tiny_llava, "--sidecar", "txt", "--max-new-tokens", "8")
    assert result.code == 3
    captions = {r["input"]: r.get("caption") for r in result.jsonl()}
    for name in ("one", "two"):
        text = (tmp_path / f"{name}.txt").read_text()
        assert text == captions[str(tmp_path / f"{name}{'.jpg' if name == 'one' else '.png'}")] + "\n"
    assert not (tmp_path / "bad.txt").exists()
    assert not list(tmp_path.glob(".mmcli-*.tmp"))  # no temporary files left behind


def test_seeded_sampling_is_reproducible(cli, tiny_llava, image_dir):
    args = ["caption", image_dir / "a.jpg", "--model", tiny_llava, "--sample", "--temperature", "1.5"]
    first = cli(*args, "--seed", "7").jsonl()[0]["caption"]
    again = cli(*args, "--seed", "7").jsonl()[0]["caption"]
    others = {cli(*args, "--seed", str(s)).jsonl()[0]["caption"] for s in (1, 2, 3)}
    assert first == again
    assert len(others | {first}) > 1


@pytest.mark.parametrize("fixture", MODELS)
def test_vqa_one_record_per_image_and_question_in_order(cli, request, image_dir, tmp_path, fixture):
    model = request.getfixturevalue(fixture)
    paths = _paths(image_dir)[:3]
    questions = tmp_path / "q.txt"
    questions.write_text("# questions\nWhat color is it?\n")
    result = cli(
        "vqa",
        *paths,
        "--model",
        model,
        "--question",
        "What shape is it?",
        "--questions-file",
        questions,
        "--max-new-tokens",
        "10",
        "-b",
        "2",
    )
    assert result.code == 0, result.stderr
    records = result.jsonl()
    asked = ["What shape is it?", "What color is it?"]
    assert [(r["input"], r["question"]) for r in records] == [(p, q) for p in paths for q in asked]
    from mmcli.modeling.backends.base import GenerateOptions

    backend = _backend(model)
    for r in records:
        batch = backend.preprocess([Image.open(r["input"]).convert("RGB")])
        assert r["answer"] == backend.generate(batch, [r["question"]], GenerateOptions(max_new_tokens=10))[0]


def test_vqa_needs_a_question(cli, tiny_llava, image_dir):
    result = cli("vqa", image_dir / "a.jpg", "--model", tiny_llava)
    assert result.code == 2 and "no question" in result.stderr


@pytest.mark.parametrize("fixture", MODELS)
def test_generative_classify_is_the_softmax_of_label_log_likelihoods(cli, request, image_dir, fixture):
    model = request.getfixturevalue(fixture)
    labels = ["cat", "a red car", "dog"]
    path = str(image_dir / "a.jpg")
    result = cli("classify", path, "--labels", ",".join(labels), "--model", model)
    assert result.code == 0, result.stderr
    (record,) = result.jsonl()
    assert record["question"] == "What is in this image?"
    # Direct computation from the model's logits: a full forward of prompt + label for each label.
    backend = _backend(model)
    text = backend.render("What is in this image?")
    batch = backend.preprocess([Image.open(path).convert("RGB")])
    loglik = []
    for label in labels:
        prompt_ids = backend.text_ids(text)
        label_ids = backend.label_ids(text, prompt_ids, [label])[0]
        row = backend.sequence(batch, 0, prompt_ids + label_ids)
        inputs = backend.model_inputs(batch, [row], 0, 1)
        with torch.no_grad():
            logits = backend.model(**inputs).logits[0].float()
        n = len(label_ids)
        logp = logits[-n - 1 : -1].log_softmax(-1).gather(-1, torch.tensor(label_ids)[:, None])
        loglik.append(logp.mean())
    expected = torch.softmax(torch.stack(loglik), dim=0)
    for label, p in zip(labels, expected.tolist(), strict=True):
        assert record["scores"][label] == pytest.approx(p, abs=1e-4)


def test_generative_classify_rejects_contrastive_options(cli, tiny_llava, image_dir):
    result = cli(
        "classify", image_dir / "a.jpg", "--labels", "a,b", "--model", tiny_llava, "--template", "{}"
    )
    assert result.code == 2 and "--question" in result.stderr


@pytest.mark.parametrize("command", [["embed"], ["compare", "--text", "x"]])
def test_embedding_commands_refuse_generative_models_before_loading_weights(command, tmp_path, image_dir):
    config_only = tmp_path / "llava-config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps({"model_type": "llava"}))  # no weights at all
    result = run_mmcli(command[0], image_dir / "a.jpg", *command[1:], "--model", config_only)
    assert result.code == 2
    assert "cannot" in result.stderr and "encode_image" in result.stderr


def test_quantize_without_cuda_is_a_clear_error(cli, tiny_llava, image_dir):
    result = cli("caption", image_dir / "a.jpg", "--model", tiny_llava, "--quantize", "4bit")
    assert result.code in (1, 2)
    assert "CUDA" in result.stderr or "bitsandbytes" in result.stderr
