"""The user config file: [defaults] fill the options left alone, [models] the model per task."""

from __future__ import annotations

import csv
import io
import json

import pytest

from mmcli import userconfig
from mmcli.errors import UsageError


@pytest.fixture
def config(tmp_path, monkeypatch):
    """Write a config file and point MMCLI_CONFIG at it."""
    path = tmp_path / "mmcli.toml"
    monkeypatch.setenv("MMCLI_CONFIG", str(path))

    def write(text: str):
        path.write_text(text)
        return path

    return write


def test_no_config_file_is_an_empty_config(tmp_path, monkeypatch):
    monkeypatch.delenv("MMCLI_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    loaded = userconfig.load()
    assert loaded.path == tmp_path / "mmcli" / "config.toml"
    assert not loaded.exists and loaded.defaults == {} and loaded.models == {}


def test_values_are_read_and_checked(config):
    config(
        '[defaults]\ndevice = "CUDA:1"\ndtype = "fp16"\nbatch_size = 32\nformat = "jsonl"\n'
        "no_cache = true\n"
        '[models]\nclassify = "clip-vit-l14"\nembed = "./models/mine"\n'
    )
    loaded = userconfig.load()
    assert loaded.exists
    assert loaded.defaults == {
        "device": "cuda:1",
        "dtype": "fp16",
        "batch_size": 32,
        "format": "jsonl",
        "no_cache": True,
    }
    assert loaded.models["classify"] == "clip-vit-l14"
    assert loaded.models["embed"] == str((loaded.path.parent / "models" / "mine").resolve())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[defaults]\nbatchsize = 3\n", ["unknown key 'batchsize'"]),
        ("[default]\ndevice = 'cpu'\n", ["unknown section 'default'"]),
        ("device = 'cpu'\n", ["unknown key 'device'"]),
        ("[defaults]\nbatch_size = 0\n", ["batch_size", ">= 1"]),
        ("[defaults]\nbatch_size = '8'\n", ["batch_size", "integer"]),
        ("[defaults]\nworkers = true\n", ["workers", "integer"]),
        ("[defaults]\nworkers = -1\n", ["workers", ">= 0"]),
        ("[defaults]\nformat = 'xml'\n", ["format", "jsonl"]),
        ("[defaults]\ndtype = 'fp8'\n", ["dtype", "bf16"]),
        ("[defaults]\ndevice = 'tpu'\n", ["device", "cuda:N"]),
        ("[defaults]\noffline = 'yes'\n", ["offline", "true or false"]),
        ("[models]\ncaptions = 'x'\n", ["unknown key 'captions' in [models]"]),
        ("[models]\nclassify = 3\n", ["[models] classify"]),
        ("[defaults]\ndevice = \n", ["invalid TOML", "line 2"]),
    ],
)
def test_bad_config_is_a_usage_error_naming_the_file(config, text, words):
    path = config(text)
    with pytest.raises(UsageError) as info:
        userconfig.load()
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_file_named_by_mmcli_config_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCLI_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(UsageError, match="does not exist"):
        userconfig.load()


# -- through the command line ----------------------------------------------------------------------------
def test_config_format_and_batch_size_are_used(cli, config, tiny_clip, image_dir):
    config('[defaults]\nformat = "csv"\nbatch_size = 2\ndevice = "cpu"\ndtype = "fp32"\n')
    result = cli("classify", image_dir / "a.jpg", image_dir / "b.png", "-l", "cat,dog", "-m", tiny_clip)
    assert result.code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.text)))
    assert [r["label"] in ("cat", "dog") for r in rows] == [True, True]
    assert "on cpu, fp32" in result.stderr


def test_command_line_option_wins_over_the_config(cli, config, tiny_clip, image_dir):
    config('[defaults]\nformat = "csv"\n')
    result = cli("classify", image_dir / "a.jpg", "-l", "cat,dog", "-m", tiny_clip, "--format", "jsonl")
    assert result.code == 0, result.stderr
    assert result.jsonl()[0]["label"] in ("cat", "dog")


def test_output_extension_wins_over_the_config_format(cli, config, tiny_clip, image_dir, tmp_path):
    config('[defaults]\nformat = "csv"\n')
    out = tmp_path / "out.jsonl"
    result = cli("classify", image_dir / "a.jpg", "-l", "cat,dog", "-m", tiny_clip, "-o", out)
    assert result.code == 0, result.stderr
    assert json.loads(out.read_text())["label"] in ("cat", "dog")


def test_config_device_is_used_and_checked(cli, config, tiny_clip, image_dir):
    config('[defaults]\ndevice = "cuda:7"\n')  # no such device here: the config's value was used
    refused = cli("classify", image_dir / "a.jpg", "-l", "cat,dog", "-m", tiny_clip)
    assert refused.code == 1 and "cuda:7" in refused.stderr
    allowed = cli("classify", image_dir / "a.jpg", "-l", "cat,dog", "-m", tiny_clip, "--device", "cpu")
    assert allowed.code == 0, allowed.stderr


def test_config_quiet(cli, config, tiny_clip, image_dir):
    config("[defaults]\nquiet = true\n")
    result = cli("classify", image_dir / "a.jpg", "-l", "cat,dog", "-m", tiny_clip)
    assert result.code == 0 and result.stderr == ""


def test_config_model_is_the_default_for_its_task(cli, config, tiny_clip, image_dir):
    config(f'[models]\nclassify = "{tiny_clip}"\n')
    result = cli("classify", image_dir / "a.jpg", "-l", "cat,dog", "-f", "jsonl")
    assert result.code == 0, result.stderr
    assert result.jsonl()[0]["model"] == str(tiny_clip)


def test_model_option_wins_over_the_config_model(cli, config, tiny_clip, image_dir):
    config('[models]\nclassify = "no-such-alias"\n')
    result = cli("classify", image_dir / "a.jpg", "-l", "cat,dog", "-m", tiny_clip, "-f", "jsonl")
    assert result.code == 0, result.stderr
    unset = cli("classify", image_dir / "a.jpg", "-l", "cat,dog", "-f", "jsonl")
    assert unset.code == 2 and "no-such-alias" in unset.stderr  # the config's model was the one tried


def test_bad_key_exits_2_naming_the_file(cli, config, tiny_clip, image_dir):
    path = config("[defaults]\nbatch = 4\n")
    result = cli("classify", image_dir / "a.jpg", "-l", "cat,dog", "-m", tiny_clip)
    assert result.code == 2
    assert str(path) in result.stderr and "'batch'" in result.stderr
    assert result.stdout == b""


def test_mmcli_config_points_elsewhere(cli, tmp_path, monkeypatch, tiny_clip, image_dir):
    home = tmp_path / "xdg"
    (home / "mmcli").mkdir(parents=True)
    (home / "mmcli" / "config.toml").write_text('[defaults]\nformat = "csv"\n')
    other = tmp_path / "other.toml"
    other.write_text('[defaults]\nformat = "json"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("MMCLI_CONFIG", raising=False)
    args = ("classify", image_dir / "a.jpg", "-l", "cat,dog", "-m", tiny_clip)
    assert cli(*args).text.startswith("input,label")  # the usual place
    monkeypatch.setenv("MMCLI_CONFIG", str(other))
    assert json.loads(cli(*args).text)[0]["label"] in ("cat", "dog")  # the file MMCLI_CONFIG names
