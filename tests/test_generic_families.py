"""Every image-text-to-text family on the generic ``vlm`` backend, with no line in configs/models.toml.

Tiny checkpoints come from tests/zoo.py (laid out as the hub lays them out, video processors included) and,
for GIT, Pix2Struct and remote code, from the builders below. Each is found by ``--model <dir>`` through
``registry.resolve``, as users run them. Covered: dispatch from transformers' auto mappings; processors
without a chat template (the prompt beside the image, as ``pipeline("image-text-to-text")`` passes it,
captions equal to the pipeline's); label scores where the model writes its answer (PaliGemma's suffix,
Florence-2's decoder); processors built without their video part when torchvision is missing or broken;
remote code; error messages that keep their first sentence.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mmcli.errors import ModelLoadError, UsageError, explain_load_error
from mmcli.modeling import registry, runtime
from mmcli.modeling.backends import generation, loading
from mmcli.modeling.backends.base import GenerateOptions, LoadOptions
from mmcli.testing import generative, recipe
from mmcli.testing.recipe import GENERATIVE, Recipe
from mmcli.testing.vocab import IMAGE_TOKEN, t5_tokenizer
from tests import zoo
from tests.conftest import built_once

pytestmark = pytest.mark.usefixtures("one_thread")
PLAIN = ["blip", "instructblip", "instructblip_t5", "idefics", "paligemma", "florence2", "kosmos2", "git"]
PLAIN += ["pix2struct"]
MAPPED = ["mllama", "deepseek_vl", "deepseek_vl_hybrid", "aya_vision"]
VIDEO = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "llava_onevision", "smolvlm"]
PIPELINE = [
    "blip",
    "instructblip",
    "instructblip_t5",
    "idefics",
    "paligemma",
    "florence2",
    "kosmos2",
    "pix2struct",
]
LABELS = ["cat", "a red car", "two dogs"]
GREEDY = GenerateOptions(max_new_tokens=8)


def image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = [(48, 40), (32, 64), (64, 30)][seed % 3]
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


IMAGES = [image(seed) for seed in range(3)]


# -- checkpoints ------------------------------------------------------------------------------------------
def _git(tok: Any) -> dict[str, Any]:
    text = {k: v for k, v in zoo.bert(tok).items() if k != "max_position_embeddings"}
    return {"vision_config": zoo.vit(), **text, "max_position_embeddings": 128, "bos_token_id": tok.cls_token_id,
            "eos_token_id": tok.sep_token_id, "tie_word_embeddings": False}  # fmt: skip


def _pix2struct(tok: Any) -> dict[str, Any]:
    text = {"vocab_size": len(tok), "hidden_size": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}
    text |= {"pad_token_id": 0, "eos_token_id": tok.eos_token_id, "decoder_start_token_id": 0}
    vision = {"hidden_size": 32, "patch_embed_hidden_size": 8 * 8 * 3, "d_ff": 64, "d_kv": 8}
    vision |= {"num_hidden_layers": 2, "num_attention_heads": 4, "seq_len": 2048, "patch_size": 8}
    return {"text_config": text | {"tie_word_embeddings": False}, "vision_config": vision}


def _instructblip_t5(tok: Any) -> dict[str, Any]:
    """InstructBLIP with a Flan-T5 language model: an encoder-decoder only its text config says it is."""
    parts = generative._blip2_parts(32, 32, 4)
    parts["qformer_config"] |= {"vocab_size": len(zoo.bert_tokenizer()), "max_position_embeddings": 64}
    image_token = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    return {**parts, "text_config": generative._language("t5", tok, 32), "image_token_index": image_token}


# Families only these tests build (not in the model matrix of tests/zoo.py), as recipes all the same.
GIT = Recipe(GENERATIVE, "GitForCausalLM", _git, zoo.bert_tokenizer, image=zoo.LLAVA_IMAGE,
             image_class="CLIPImageProcessorPil", processor_class="GitProcessor",
             projector="git.visual_projection", language_key="git.encoder")  # fmt: skip
PIX2STRUCT = Recipe(GENERATIVE, "Pix2StructForConditionalGeneration", _pix2struct, t5_tokenizer,
                    image={"max_patches": 64, "patch_size": {"height": 8, "width": 8}},
                    image_class="Pix2StructImageProcessorPil", processor_class="Pix2StructProcessor",
                    projector="encoder.embeddings", language_key="decoder")  # fmt: skip
INSTRUCTBLIP_T5 = Recipe(GENERATIVE, "InstructBlipForConditionalGeneration", _instructblip_t5, t5_tokenizer,
                         image={"size": {"height": 32, "width": 32}}, image_class="BlipImageProcessorPil",
                         processor_class="InstructBlipProcessor",
                         processor=lambda tok: {"qformer_tokenizer": zoo.bert_tokenizer(), "num_query_tokens": 4},
                         projector="language_projection")  # fmt: skip


REMOTE_CONFIG = """from transformers import LlavaConfig


class TinyRemoteConfig(LlavaConfig):
    model_type = "tiny_remote_vlm"
"""
REMOTE_MODEL = """from transformers import LlavaForConditionalGeneration

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = TinyRemoteConfig
"""


def build_remote(out: Path, auto_class: str = "AutoModelForImageTextToText") -> Path:
    """A LLaVA whose config and model classes live in the checkpoint (``auto_map``), as remote code does."""
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    from mmcli.testing.generative import build_llava

    build_llava(out)
    weights = LlavaForConditionalGeneration.from_pretrained(out).state_dict()  # the names the classes use
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "model.safetensors", {"format": "pt"})
    (out / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (out / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    config = json.loads((out / "config.json").read_text())
    config["model_type"] = "tiny_remote_vlm"
    config["architectures"] = ["TinyRemoteForConditionalGeneration"]
    config["auto_map"] = {
        "AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
        auto_class: "modeling_tiny_remote.TinyRemoteForConditionalGeneration",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "git": partial(recipe.build, GIT),
    "pix2struct": partial(recipe.build, PIX2STRUCT),
    "instructblip_t5": partial(recipe.build, INSTRUCTBLIP_T5),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return built_once(tmp_path_factory, lambda family, out: BUILDERS[family](out) if family in BUILDERS else zoo.build(family, out))  # fmt: skip


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("family-images")
    for i, img in enumerate(IMAGES):
        img.save(root / f"{i}.png")
    return [root / f"{i}.png" for i in range(len(IMAGES))]


# -- dispatch: no config line needed ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "family"),
    [
        ({"model_type": "mllama"}, "vlm"),
        ({"model_type": "paligemma"}, "vlm"),
        ({"model_type": "qwen3_vl"}, "vlm"),
        ({"model_type": "align"}, "clip"),
        ({"model_type": "siglip2"}, "clip"),
        ({"model_type": "blip", "architectures": ["BlipForConditionalGeneration"]}, "vlm"),
        ({"model_type": "blip", "architectures": ["BlipModel"]}, "clip"),
        ({"model_type": "blip-2"}, "blip2"),
        ({"model_type": "llava_next"}, "llava"),
        (
            {"model_type": "qwen", "auto_map": {"AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}},
            "vlm",
        ),
    ],
)
def test_families_come_from_transformers_auto_mappings(
    config: dict[str, Any], family: str, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert registry.resolve(str(tmp_path)).family == family


def test_unknown_or_unusable_model_types_say_what_works(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UsageError, match="supported model types") as info:
        registry.resolve(str(tmp_path))
    assert "image-text-to-text" in str(info.value) and "blip-2" in str(info.value)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "minigpt4", "auto_map": {"AutoModel": "m.M"}})
    )
    with pytest.raises(UsageError, match=r"runs only on its own code .* mmcli cannot drive"):
        registry.resolve(str(tmp_path))


def test_configs_keep_only_what_differs_from_transformers() -> None:
    types = registry.models_table()["model_types"]
    assert not {"gemma3", "idefics2", "idefics3", "qwen2_vl", "qwen2_5_vl", "clip"} & set(types)
    assert {types[t]["family"] for t in ("blip-2", "llava", "llava_next")} == {"blip2", "llava"}


# -- every family, through the command line ---------------------------------------------------------------
@pytest.mark.parametrize("family", PLAIN + MAPPED + VIDEO)
def test_caption_vqa_classify_in_batches_of_1_and_3(
    family: str, checkpoint: Callable[[str], Path], image_files: list[Path], cli: Callable[..., Any]
) -> None:
    model = checkpoint(family)
    runs = {
        "caption": ["caption", *image_files, "--max-new-tokens", "6"],
        "vqa": ["vqa", *image_files, "--question", "what is it?", "--max-new-tokens", "6"],
        "classify": ["classify", *image_files, "--labels", ",".join(LABELS)],
    }
    for task, args in runs.items():
        records = {}
        for size in (1, 3):
            result = cli(*args, "--model", model, "--batch-size", size, "--format", "jsonl")
            assert result.code == 0, f"{task}: {result.stderr}"
            records[size] = result.jsonl()
        assert records[1] == records[3], task
        assert [r["input"] for r in records[1]] == [str(p) for p in image_files]
        if task == "classify":
            assert all(abs(sum(r["scores"].values()) - 1) < 1e-4 for r in records[1])
        else:
            assert all(isinstance(r.get("caption", r.get("answer")), str) for r in records[1])


def load(checkpoint: Callable[[str], Path], family: str, **options: Any) -> Any:
    spec = registry.resolve(str(checkpoint(family)))
    model: Any = registry.create_backend(spec, runtime.resolve("cpu", "fp32"), LoadOptions(**options))
    return model


# -- processors without a chat template -------------------------------------------------------------------
@pytest.mark.parametrize("family", PIPELINE)
def test_captions_and_answers_equal_the_pipeline(family: str, checkpoint: Callable[[str], Path]) -> None:
    from transformers import pipeline

    model = load(checkpoint, family)
    assert model.plain and model.processor.chat_template is None
    pipe = pipeline("image-text-to-text", model=str(checkpoint(family)))
    for img, prompt in [(IMAGES[0], None), (IMAGES[1], "what is it?")]:
        ours = model.generate(model.preprocess([img]), [prompt], GREEDY)[0]
        out = pipe(
            images=img,
            text=model.render(prompt),
            return_full_text=False,
            max_new_tokens=GREEDY.max_new_tokens,
            generate_kwargs={"do_sample": False, "num_beams": 1},
        )
        assert ours, "tiny models must write text, or the comparison proves nothing"
        assert ours == out[0]["generated_text"].strip()


def test_plain_prompts_come_from_the_config(checkpoint: Callable[[str], Path]) -> None:
    paligemma, florence, blip = (load(checkpoint, f) for f in ("paligemma", "florence2", "blip"))
    assert paligemma.render(None) == "caption en" and paligemma.render("why?") == "answer en why?"
    assert florence.render(None) == "<CAPTION>"
    assert blip.render(None) == "" and blip.default_prompt("classify") is None


def test_the_processor_places_the_image_once(checkpoint: Callable[[str], Path]) -> None:
    instructblip = load(checkpoint, "instructblip")
    ids = instructblip.inputs([IMAGES[0]], [instructblip.render("what is it?")], "left")["input_ids"][0]
    image_token = instructblip.model.config.image_token_id
    assert int((ids == image_token).sum()) == instructblip.model.config.num_query_tokens
    idefics = load(checkpoint, "idefics")
    ids = idefics.inputs([IMAGES[0]], ["what is it?"], "left")["input_ids"][0].tolist()
    image_at = ids.index(idefics.tokenizer.convert_tokens_to_ids("<image>"))
    text_at = len(ids) - len(idefics.tokenizer("what is it?", add_special_tokens=False)["input_ids"])
    assert image_at < text_at, "IDEFICS: the image goes before the text"


# -- label scores where the model writes its answer -------------------------------------------------------
def test_paligemma_scores_labels_as_its_suffix(checkpoint: Callable[[str], Path]) -> None:
    """Labels go after the newline PaliGemma's processor appends, in the causal suffix, exactly as the
    processor lays out a training example (``suffix=``): not inside the prefix, which attends both ways."""
    model = load(checkpoint, "paligemma")
    scores = model.score_labels(model.preprocess([IMAGES[0]]), "", LABELS)[0]
    expected = []
    with torch.no_grad():
        for label in LABELS:
            inputs = model.processor(
                images=[IMAGES[0]], text=["caption en"], suffix=[label], return_tensors="pt"
            )
            start = int((inputs["token_type_ids"][0] == 0).sum())
            target = inputs["input_ids"][0, start:-1]  # the suffix, without its EOS
            inputs.pop("labels")
            logits = model.model(**inputs).logits[0, start - 1 : -2]
            expected.append(logits.log_softmax(-1).gather(-1, target[:, None]).mean().item())
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-4, rtol=0)


def test_florence2_scores_labels_in_its_decoder(checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """After the decoder's start token and the BOS its generation config forces (Florence-2 on the hub)."""
    directory = shutil.copytree(checkpoint("florence2"), tmp_path / "florence2")
    settings = json.loads((directory / "generation_config.json").read_text())
    settings["forced_bos_token_id"] = settings["bos_token_id"]
    (directory / "generation_config.json").write_text(json.dumps(settings))
    model = registry.create_backend(
        registry.resolve(str(directory)), runtime.resolve("cpu", "fp32"), LoadOptions()
    )
    assert not model.decoder_only
    scores = model.score_labels(model.preprocess([IMAGES[1]]), "", LABELS)[0]
    inputs = model.processor(images=[IMAGES[1]], text=["<CAPTION>"], return_tensors="pt")
    start = [settings["decoder_start_token_id"], settings["bos_token_id"]]
    expected = []
    with torch.no_grad():
        for label in LABELS:
            target = model.tokenizer(label, add_special_tokens=False)["input_ids"]
            decoder = torch.tensor([start + target[:-1]])
            logits = model.model(**inputs, decoder_input_ids=decoder).logits[0, 1:]
            expected.append(logits.log_softmax(-1).gather(-1, torch.tensor(target)[:, None]).mean().item())
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-4, rtol=0)


def test_instructblip_t5_scores_labels_in_its_decoder(checkpoint: Callable[[str], Path]) -> None:
    model = load(checkpoint, "instructblip_t5")
    assert not model.decoder_only and model.tokenizer.padding_side == "right"
    scores = model.score_labels(model.preprocess([IMAGES[2]]), "what is it?", LABELS)[0]
    inputs = model.processor(images=[IMAGES[2]], text=["what is it?"], return_tensors="pt")
    start = model.model.config.text_config.decoder_start_token_id
    expected = []
    with torch.no_grad():
        for label in LABELS:
            target = model.tokenizer(label, add_special_tokens=False)["input_ids"]
            logits = model.model(**inputs, decoder_input_ids=torch.tensor([[start, *target[:-1]]])).logits[0]
            expected.append(logits.log_softmax(-1).gather(-1, torch.tensor(target)[:, None]).mean().item())
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["kosmos2", "instructblip", "paligemma"])
def test_label_tokens_hold_the_label_alone(family: str, checkpoint: Callable[[str], Path]) -> None:
    model = load(checkpoint, family)
    inputs = model.inputs([IMAGES[0]], [model.render(None)], "left")
    for label, tokens in zip(LABELS, model.label_targets(inputs, LABELS), strict=True):
        assert model.tokenizer.decode(tokens).strip() == label


class SlowTokenizer:
    """A tokenizer without offsets: label tokens come from tokenizing with and without the label."""

    is_fast = False

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, text: str, **kwargs: Any) -> Any:
        assert "return_offsets_mapping" not in kwargs
        return self.tokenizer(text, **kwargs)


@pytest.mark.parametrize("family", ["paligemma", "kosmos2", "idefics", "florence2"])
def test_label_tokens_agree_with_and_without_offsets(family: str, checkpoint: Callable[[str], Path]) -> None:
    tokenizer = load(checkpoint, family).tokenizer
    assert tokenizer.is_fast
    for context in ["", "caption en\n", "Answer:", "<image></image>"]:
        for label in LABELS:
            fast = generation.label_tokens(tokenizer, context, label)
            assert fast == generation.label_tokens(SlowTokenizer(tokenizer), context, label), (context, label)
    with pytest.raises(UsageError, match="empty"):
        generation.label_tokens(tokenizer, "x", " ")


# -- torchvision is never a trap ----------------------------------------------------------------------------
def hub_layout(directory: Path, out: Path) -> Path:
    """The older hub layout: the image and video processors' settings in preprocessor_config.json and
    video_preprocessor_config.json, the processor's own (if any) left in processor_config.json."""
    shutil.copytree(directory, out)
    saved = json.loads((out / "processor_config.json").read_text())
    named = {"processor_class": saved["processor_class"]}
    (out / "preprocessor_config.json").write_text(json.dumps(saved.pop("image_processor") | named))
    (out / "video_preprocessor_config.json").write_text(json.dumps(saved.pop("video_processor") | named))
    (out / "processor_config.json").write_text(json.dumps(saved))
    return out


@pytest.mark.parametrize("family", VIDEO)
def test_processors_load_without_their_video_part(
    family: str, checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    from transformers import AutoProcessor

    saved = json.loads((checkpoint(family) / "processor_config.json").read_text())
    assert "video_processor" in saved and not saved["processor_class"].startswith("ImageOnly")
    for directory in (checkpoint(family), hub_layout(checkpoint(family), tmp_path / "hub")):
        if not loading_has_torchvision():
            with pytest.raises(ImportError, match="requires the Torchvision library"):
                AutoProcessor.from_pretrained(directory)
        model = registry.create_backend(
            registry.resolve(str(directory)), runtime.resolve("cpu", "fp32"), LoadOptions()
        )
        assert type(model.processor).__name__ == saved["processor_class"]
        assert model.generate(model.preprocess([IMAGES[0]]), ["what?"], GREEDY)[0]
        if not loading_has_torchvision():
            assert isinstance(model.processor.video_processor, loading.NoVideo)
            assert (
                model.processor.video_processor.video_processor_type
                == saved["video_processor"]["video_processor_type"]
            )


def loading_has_torchvision() -> bool:
    from mmcli.testing.vlm import has_torchvision

    return has_torchvision()


def test_a_torchvision_that_does_not_import_is_ignored(
    checkpoint: Callable[[str], Path], image_files: list[Path], tmp_path: Path
) -> None:
    """A torchvision built for another torch fails on import; transformers would try it and fail everywhere."""
    package = tmp_path / "site" / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    info = tmp_path / "site" / "torchvision-0.28.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path])}
    args = ["caption", str(image_files[0]), "--model", str(checkpoint("qwen2_vl")), "--format", "jsonl"]
    proc = subprocess.run(
        [sys.executable, "-m", "mmcli", *args, "--max-new-tokens", "4"],
        capture_output=True,
        env=env,
        timeout=300,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert json.loads(proc.stdout)["caption"] and "pip install torchvision" not in stderr


def test_no_message_suggests_installing_torchvision() -> None:
    import mmcli

    for path in Path(mmcli.__file__).parent.rglob("*.py"):
        assert "pip install torchvision" not in path.read_text(), path


def test_load_errors_keep_their_first_sentence_whole() -> None:
    exc = ImportError(
        "\nQwen2VLVideoProcessor requires the Torchvision library but it was not found in your\n"
        "environment. Check out the instructions on the\ninstallation page."
    )
    message = explain_load_error(exc, "some/model").message
    assert message == (
        "could not load some/model: Qwen2VLVideoProcessor requires the Torchvision library but it was not "
        "found in your environment."
    )
    assert explain_load_error(ValueError("see config.json, e.g. its model_type"), "m").message.endswith(
        "see config.json, e.g. its model_type"
    )


# -- remote code ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("auto_class", ["AutoModelForImageTextToText", "AutoModelForCausalLM"])
def test_remote_code_runs_with_trust_remote_code(
    auto_class: str, image_files: list[Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    model = build_remote(tmp_path / "remote", auto_class)
    refused = cli("caption", image_files[0], "--model", model)
    assert refused.code != 0 and "needs code from its repository" in refused.stderr
    assert "--trust-remote-code" in refused.stderr
    trusted = ["--model", model, "--trust-remote-code", "--format", "jsonl"]
    for args in (["caption", "--max-new-tokens", "6"], ["classify", "--labels", ",".join(LABELS)]):
        records = [cli(*args, *image_files, *trusted, "--batch-size", size) for size in (1, 3)]
        assert [r.code for r in records] == [0, 0], records[0].stderr
        assert records[0].jsonl() == records[1].jsonl() and len(records[0].jsonl()) == 3


@pytest.mark.parametrize("tokenizer_names_a_processor", [False, True])
def test_remote_code_without_a_processor_of_images_is_refused(
    tokenizer_names_a_processor: bool, tmp_path: Path
) -> None:
    """Qwen-VL (the original) and others ship a tokenizer that reads images from the text: no processor."""
    model = build_remote(tmp_path / "remote", "AutoModelForCausalLM")
    for name in ("processor_config.json", "chat_template.jinja", "chat_template.json"):
        (model / name).unlink(missing_ok=True)
    if not tokenizer_names_a_processor:
        settings = json.loads((model / "tokenizer_config.json").read_text())
        settings.pop("processor_class", None)
        (model / "tokenizer_config.json").write_text(json.dumps(settings))
    spec = registry.resolve(str(model))
    with pytest.raises(ModelLoadError, match="needs its own code that mmcli cannot drive") as info:
        registry.create_backend(spec, runtime.resolve("cpu", "fp32"), LoadOptions(trust_remote_code=True))
    assert "\n" not in info.value.message


@pytest.mark.parametrize("model_type", ["blip", "git"])
def test_an_empty_prompt_with_no_start_token_starts_from_the_models_own(
    model_type: str, tmp_path: Path
) -> None:
    """A tokenizer that adds no BOS/CLS turns the empty caption prompt into zero tokens: BLIP and GIT used to
    crash (IndexError, a reshape of 0 elements); the model's generate now starts from its own start token."""
    root = Path(__file__).resolve().parent.parent
    directory = tmp_path / model_type
    build = [
        sys.executable,
        str(root / "bench" / "coverage.py"),
        "--build",
        model_type,
        "--dir",
        str(directory),
    ]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    for args in (["caption", "--max-new-tokens", "3"], ["classify", "--labels", "cat,dog"]):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmcli",
                args[0],
                str(image),
                "--model",
                str(directory),
                *args[1:],
                "-f",
                "jsonl",
            ],
            capture_output=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        record = json.loads(proc.stdout)
        assert "error" not in record and ("caption" in record or "label" in record)
