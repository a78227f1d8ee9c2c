"""mmcli models --info: the anatomy card of a model, checked on the zoo's tiny checkpoints (tests/zoo.py).

The card counts parameters on a model built from config.json on the meta device; here each count is
computed again from the really loaded model (``from_pretrained``), as the sum of ``p.numel()`` over the
submodules the card names, and the parts are checked against what each family is known to hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import zoo
from tests.conftest import Result, run_mmcli

GENERATIVE_PARTS = ["modality_encoder", "input_projector", "llm", "output_projector", "generator"]
CONTRASTIVE_PARTS = ["vision_encoder", "text_encoder", "projections"]


@pytest.fixture(scope="session")
def zoo_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("zoo")
    return lambda family: zoo.cached(family, root)


def card(cli: Callable[..., Result], model: str | Path) -> dict[str, Any]:
    result = cli("models", "--info", model, "--format", "json")
    assert result.code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def loaded(model: Path) -> Any:
    """The checkpoint loaded for real, with the class its config.json names."""
    import transformers

    architecture = json.loads((model / "config.json").read_text())["architectures"][0]
    return getattr(transformers, architecture).from_pretrained(model).eval()


def counts_from(model: Any, parts: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each parameter of the loaded model (shared ones once) to the part whose module path is the longest
    prefix of its name."""
    paths = {path: name for name, part in parts.items() for path in part["modules"]}
    counts = dict.fromkeys(parts, 0)
    for name, param in model.named_parameters():
        owners = [p for p in paths if name == p or name.startswith(p + ".")]
        if owners:
            counts[paths[max(owners, key=len)]] += param.numel()
    return counts


@pytest.mark.parametrize("family", list(zoo.FAMILIES))
def test_parameter_counts_equal_the_loaded_model(
    family: str, cli: Callable[..., Result], zoo_model: Callable[[str], Path]
) -> None:
    directory = zoo_model(family)
    info = card(cli, directory)
    model = loaded(directory)
    generative = "caption" in zoo.FAMILIES[family]
    assert info["kind"] == ("generative" if generative else "contrastive")
    assert list(info["parts"]) == (GENERATIVE_PARTS if generative else CONTRASTIVE_PARTS)
    for part in info["parts"].values():
        for path in part["modules"]:
            try:  # every path names a module or a parameter of the real model
                model.get_submodule(path)
            except AttributeError:
                model.get_parameter(path)
    assert {name: part["parameters"] for name, part in info["parts"].items()} == counts_from(
        model, info["parts"]
    )
    assert info["total_parameters"] == sum(p.numel() for p in model.parameters())
    assert info["total_parameters"] == sum(part["parameters"] for part in info["parts"].values())
    for name in ("modality_encoder", "llm") if generative else ("vision_encoder", "text_encoder"):
        assert info["parts"][name]["parameters"] > 0, name
    relative = hasattr(getattr(model.config, "text_config", model.config), "relative_attention_num_buckets")
    assert (info["context_length"] or 0) > 0 or relative  # T5's relative positions set no length
    assert info["dtype"].startswith("float32")


def whole(model: Any, path: str) -> int:
    """All parameters under one submodule of the loaded model."""
    return sum(p.numel() for p in model.get_submodule(path).parameters())


def test_llava_parts_are_its_submodules(cli: Callable[..., Result], zoo_model: Callable[[str], Path]) -> None:
    directory = zoo_model("llava")
    info, model = card(cli, directory), loaded(directory)
    parts = info["parts"]
    assert parts["modality_encoder"]["modules"] == ["model.vision_tower"]
    assert parts["modality_encoder"]["parameters"] == whole(model, "model.vision_tower")
    assert parts["input_projector"]["modules"] == ["model.multi_modal_projector"]
    assert parts["input_projector"]["parameters"] == whole(model, "model.multi_modal_projector")
    assert parts["input_projector"]["kind"].startswith("MLP")
    assert parts["llm"]["parameters"] == whole(model, "model.language_model")
    assert parts["output_projector"] == {
        "modules": ["lm_head"],
        "parameters": whole(model, "lm_head"),
        "kind": f"linear -> {model.config.text_config.vocab_size} tokens",
    }
    assert parts["generator"]["modules"] == [] and parts["generator"]["kind"].startswith("none")
    config = model.config
    assert info["image_tokens"] == (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    assert info["context_length"] == config.text_config.max_position_embeddings


def test_blip2_projector_is_a_qformer_with_its_queries(
    cli: Callable[..., Result], zoo_model: Callable[[str], Path]
) -> None:
    directory = zoo_model("blip2_opt")
    info, model = card(cli, directory), loaded(directory)
    projector = info["parts"]["input_projector"]
    assert projector["kind"] == "Q-Former"
    assert set(projector["modules"]) == {"qformer", "query_tokens", "language_projection"}
    expected = whole(model, "qformer") + model.query_tokens.numel() + whole(model, "language_projection")
    assert projector["parameters"] == expected
    assert info["image_tokens"] == model.config.num_query_tokens


def test_a_projector_inside_the_vision_tower_is_counted_apart(
    cli: Callable[..., Result], zoo_model: Callable[[str], Path]
) -> None:
    """Qwen2-VL's patch merger sits inside ``model.visual``: the encoder's count leaves it out."""
    directory = zoo_model("qwen2_vl")
    info, model = card(cli, directory), loaded(directory)
    parts = info["parts"]
    assert parts["input_projector"]["modules"] == ["model.visual.merger"]
    assert parts["input_projector"]["parameters"] == whole(model, "model.visual.merger")
    assert parts["modality_encoder"]["parameters"] == whole(model, "model.visual") - whole(
        model, "model.visual.merger"
    )


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        ("idefics2", "perceiver resampler"),
        ("idefics", "gated cross-attention layers"),
        ("mllama", "linear + gated cross-attention in the LLM"),
        ("kosmos2", "attention pooling (latent queries)"),
        ("paligemma", "linear"),
        ("gemma3", "linear + pooling"),
    ],
)
def test_projector_kinds(
    family: str, kind: str, cli: Callable[..., Result], zoo_model: Callable[[str], Path]
) -> None:
    assert card(cli, zoo_model(family))["parts"]["input_projector"]["kind"] == kind


def test_a_head_inside_the_language_model_is_the_output_projector(
    cli: Callable[..., Result], zoo_model: Callable[[str], Path]
) -> None:
    directory = zoo_model("kosmos2")
    info, model = card(cli, directory), loaded(directory)
    assert info["parts"]["output_projector"]["modules"] == ["text_model.lm_head"]
    assert info["parts"]["llm"]["parameters"] == whole(model, "text_model") - whole(
        model, "text_model.lm_head"
    )


def test_contrastive_card(cli: Callable[..., Result], zoo_model: Callable[[str], Path]) -> None:
    directory = zoo_model("clip")
    info, model = card(cli, directory), loaded(directory)
    parts = info["parts"]
    assert parts["vision_encoder"] == {
        "modules": ["vision_model"],
        "parameters": whole(model, "vision_model"),
        "kind": "CLIPVisionModel (clip_vision_model)",
    }
    assert parts["text_encoder"]["parameters"] == whole(model, "text_model")
    assert set(parts["projections"]["modules"]) == {"visual_projection", "text_projection", "logit_scale"}
    assert info["image_tokens"] == 16  # 32 px images in 8 px patches


@pytest.mark.parametrize(
    ("family", "tokens"), [("gemma3", 4), ("idefics2", 4), ("paligemma", 16), ("blip2_t5", 4)]
)
def test_image_tokens_per_image(
    family: str, tokens: int, cli: Callable[..., Result], zoo_model: Callable[[str], Path]
) -> None:
    assert card(cli, zoo_model(family))["image_tokens"] == tokens


def test_table_names_the_five_parts(cli: Callable[..., Result], zoo_model: Callable[[str], Path]) -> None:
    result = cli("models", "--info", zoo_model("llava"), "--format", "table")
    assert result.code == 0, result.stderr
    for title in ("modality encoder", "input projector", "LLM backbone", "output projector", "generator"):
        assert title in result.text
    assert "image tokens / image  16" in result.text and "context length        512" in result.text


def test_an_alias_is_read_from_its_directory(cli: Callable[..., Result]) -> None:
    info = card(cli, "shapes-llava")
    assert info["name"] == "shapes-llava" and info["architecture"] == "LlavaForConditionalGeneration"
    assert info["checkpoint"].endswith("models/shapes-llava")


def test_the_listing_still_works(cli: Callable[..., Result]) -> None:
    result = cli("models", "--format", "jsonl")
    assert result.code == 0, result.stderr
    rows = result.jsonl()
    assert {"clip-vit-b32", "shapes-llava"} <= {r["alias"] for r in rows}
    assert all(r["capabilities"] for r in rows)


def test_unknown_names_and_bad_directories_are_one_line_errors(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    result = cli("models", "--info", "no-such-model")
    assert result.code == 2 and "unknown model 'no-such-model'" in result.stderr
    result = cli("models", "--info", tmp_path)
    assert result.code == 2 and "holds no config.json" in result.stderr
    (tmp_path / "config.json").write_text("{not json")
    result = cli("models", "--info", tmp_path)
    assert result.code == 1 and "is not valid JSON" in result.stderr


def test_a_hub_id_offline_is_a_one_line_message() -> None:
    result = run_mmcli("models", "--info", "someone/not-cached-anywhere", env={"HF_HUB_OFFLINE": "1"})
    assert result.code == 1
    assert result.stderr.startswith("mmcli: error:") and "Traceback" not in result.stderr


def test_importing_the_command_loads_neither_torch_nor_transformers() -> None:
    code = "import sys, mmcli.cli, mmcli.commands.models; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
