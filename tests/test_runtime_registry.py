"""Device/dtype resolution and model resolution: one place each, typed errors that say what is valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmcli.errors import CapabilityError, DeviceError, UnknownModelError, UsageError
from mmcli.modeling import registry, runtime


def test_auto_device_is_cpu_here_and_auto_dtype_follows_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rt = runtime.resolve("auto", "auto")
    assert rt.device.type == "cpu" and rt.dtype == torch.float32


def test_auto_dtype_is_fp16_on_accelerators_unless_the_model_says_otherwise():
    cuda = torch.device("cuda")
    assert runtime.resolve_dtype("auto", cuda) == torch.float16
    assert runtime.resolve_dtype("auto", torch.device("mps")) == torch.float16
    assert runtime.resolve_dtype("auto", torch.device("cpu"), model_default="bf16") == torch.float32


def test_auto_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.resolve_device("auto").type == "mps"


@pytest.mark.parametrize("name", ["cuda", "cuda:1", "mps"])
def test_missing_device_is_an_error_naming_what_exists(name, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError) as info:
        runtime.resolve_device(name)
    assert "available devices: cpu" in str(info.value)


def test_bad_device_and_dtype_names_are_usage_errors():
    with pytest.raises(UsageError):
        runtime.resolve_device("tpu")
    with pytest.raises(UsageError):
        runtime.resolve_dtype("int3", torch.device("cpu"))


def test_bf16_on_cpu_is_allowed():
    assert runtime.resolve("cpu", "bf16").dtype == torch.bfloat16


def test_alias_resolves_from_the_config():
    spec = registry.resolve("clip-vit-b32")
    assert spec.family == "clip" and spec.checkpoint == "openai/clip-vit-base-patch32"
    assert spec.template == "a photo of a {}."
    assert spec.label == "openai/clip-vit-base-patch32"
    assert registry.resolve("clip-vit-b32", revision="abc123").label.endswith("@abc123")


def test_local_directory_family_comes_from_config_json(tiny_clip, tiny_siglip, tmp_path):
    assert registry.resolve(str(tiny_clip)).family == "clip"
    siglip = registry.resolve(str(tiny_siglip))
    assert siglip.model_type == "siglip" and registry.model_type_entry("siglip")["scoring"] == "sigmoid"
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UsageError, match="supported model types"):
        registry.resolve(str(odd))
    with pytest.raises(UsageError, match=r"no config\.json"):
        registry.resolve(str(tmp_path))


def test_unknown_name_lists_aliases():
    with pytest.raises(UnknownModelError) as info:
        registry.resolve("definitely-not-a-model")
    assert "clip-vit-b32" in str(info.value) and "hub id" in str(info.value)


def test_capabilities_are_checked_before_weights_load():
    spec = registry.ModelSpec(name="x", family="clip", checkpoint="nowhere/nothing")
    registry.require(spec, {"encode_image"}, "embed")
    with pytest.raises(CapabilityError, match="cannot caption"):
        registry.require(spec, {"generate"}, "caption")


def test_config_capabilities_match_the_backend_classes():
    import importlib

    for name, family in registry.models_table()["families"].items():
        module, _, cls = family["backend"].partition(":")
        backend = getattr(importlib.import_module(module), cls)
        assert set(family["capabilities"]) == set(backend.capabilities), name


def test_every_alias_names_a_known_family_and_a_template_with_a_placeholder():
    for alias, entry in registry.aliases().items():
        registry.family_entry(entry["family"])
        if "template" in entry:
            assert "{}" in entry["template"], alias


def test_bundled_model_alias_resolves_from_any_directory(tmp_path, monkeypatch) -> None:
    from mmcli.modeling import registry

    monkeypatch.chdir(tmp_path)
    spec = registry.resolve("shapes-clip")
    assert Path(spec.checkpoint).is_absolute() and Path(spec.checkpoint, "config.json").is_file()
