"""mmcli doctor: versions, devices, caches, config and environment, as text or JSON."""

from __future__ import annotations

import json

import pytest

from mmcli.commands.doctor import directory_size, human_size


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A machine with no config file and empty caches."""
    monkeypatch.delenv("MMCLI_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("MMCLI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_json_has_every_section(cli, home):
    result = cli("doctor", "--format", "json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"versions", "devices", "caches", "config", "environment"}
    versions = report["versions"]
    for name in ("python", "mmcli", "torch", "transformers", "huggingface_hub", "pillow", "numpy"):
        assert versions[name] and versions[name] != "not installed"
    for name in ("accelerate", "bitsandbytes", "pyarrow", "ray"):
        assert name in versions  # a version or "not installed"
    cpu = report["devices"][0]
    assert cpu["device"] == "cpu" and cpu["threads"] >= 1 and "fp32" in cpu["dtypes"]
    for dev in report["devices"][1:]:
        assert dev["device"].startswith(("cuda:", "mps")) and "fp16" in dev["dtypes"]
    assert set(report["caches"]) == {"huggingface_hub", "embeddings"}
    assert report["caches"]["embeddings"] == {
        "path": str(home / "cache"),
        "exists": False,
        "size_bytes": None,
        "from": "MMCLI_CACHE_DIR",
    }
    assert "HF_HOME" in report["environment"] and "CUDA_VISIBLE_DEVICES" in report["environment"]
    assert report["environment"]["MMCLI_CACHE_DIR"] == str(home / "cache")


def test_works_with_no_config_file(cli, home):
    report = json.loads(cli("doctor", "-f", "json").stdout)
    config = report["config"]
    assert config["path"] == str(home / "config" / "mmcli" / "config.toml")
    assert config["exists"] is False and config["error"] is None and config["defaults"] == {}
    assert config["models"]["classify"] == {"model": "clip-vit-b32", "from": "built-in"}


def test_config_values_in_force_are_shown(cli, home, monkeypatch):
    path = home / "my.toml"
    path.write_text('[defaults]\nbatch_size = 8\ndevice = "cpu"\n[models]\nembed = "clip-vit-l14"\n')
    monkeypatch.setenv("MMCLI_CONFIG", str(path))
    config = json.loads(cli("doctor", "-f", "json").stdout)["config"]
    assert config["path"] == str(path) and config["exists"] is True
    assert config["defaults"] == {"batch_size": 8, "device": "cpu"}
    assert config["models"]["embed"] == {"model": "clip-vit-l14", "from": "config"}
    text = cli("doctor").text
    assert str(path) in text and "batch_size" in text and "clip-vit-l14 (config)" in text


def test_a_broken_config_is_reported_not_fatal(cli, home, monkeypatch):
    path = home / "bad.toml"
    path.write_text("[defaults]\nbatchsize = 8\n")
    monkeypatch.setenv("MMCLI_CONFIG", str(path))
    result = cli("doctor", "-f", "json")
    assert result.code == 0
    assert "batchsize" in json.loads(result.stdout)["config"]["error"]


def test_text_is_readable_and_secrets_are_hidden(cli, home, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    result = cli("doctor")
    assert result.code == 0, result.stderr
    for title in ("Versions", "Devices", "Caches", "Config", "Environment"):
        assert title in result.text
    assert "cpu" in result.text and "torch" in result.text
    assert "http://127.0.0.1:1" in result.text
    assert "hf_secret_value" not in result.text and "hidden" in result.text


def test_unknown_format_is_a_usage_error(cli, home):
    result = cli("doctor", "--format", "yaml")
    assert result.code == 2 and "text, json" in result.stderr


def test_sizes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    (tmp_path / "link").symlink_to(tmp_path / "a")  # the hub cache's snapshots link to blobs
    assert directory_size(tmp_path) == 15
    assert human_size(15) == "15 B" and human_size(2_500_000) == "2.5 MB" and human_size(None) == "-"


def test_cuda_devices_with_name_memory_and_dtypes(monkeypatch):
    """No GPU here: torch.cuda is stubbed to show how each CUDA device is reported."""
    import types

    import torch

    from mmcli.commands.doctor import devices

    props = [
        types.SimpleNamespace(name="Tesla T4", total_memory=16 * 10**9),
        types.SimpleNamespace(name="NVIDIA H100", total_memory=80 * 10**9),
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(7, 5), (9, 0)][i])
    found = {d["device"]: d for d in devices()}
    assert found["cuda:0"]["name"] == "Tesla T4" and found["cuda:0"]["dtypes"] == ["fp32", "fp16"]
    assert found["cuda:1"]["memory_bytes"] == 80 * 10**9
    assert found["cuda:1"]["dtypes"] == ["fp32", "fp16", "bf16"]  # bf16 from compute capability 8.0


def test_doctor_says_whether_torchvision_imports(tmp_path) -> None:
    """Absent here; a build for another torch is reported as not importing (and ignored), never as fine."""
    import json
    import os
    import subprocess
    import sys

    def doctor(env: dict[str, str]) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "mmcli", "doctor", "--format", "json"],
            capture_output=True,
            env={**os.environ, **env},
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["versions"]["torchvision"])

    assert doctor({}).startswith("not installed")
    site = tmp_path / "site"
    (site / "torchvision").mkdir(parents=True)
    (site / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n'
    )
    info = site / "torchvision-0.28.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    state = doctor({"PYTHONPATH": os.pathsep.join([str(site), *sys.path])})
    assert (
        state.startswith("0.28.0 (does not import:") and "torchvision::nms" in state and "ignores it" in state
    )
