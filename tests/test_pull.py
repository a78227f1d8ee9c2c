"""mmcli pull, for real: a subprocess downloads from a fake hub on 127.0.0.1 into a temporary HF_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_mmcli
from tests.hubserver import FakeHub

REPO = "acme/tiny-clip"


@pytest.fixture(scope="module")
def hub(tiny_clip: Path):
    """A fake hub with a safetensors repo (that also holds pickle and TF weights), a pickle-only repo."""
    with FakeHub() as hub:
        hub.add_directory(
            REPO,
            tiny_clip,
            **{"pytorch_model.bin": b"pickle" * 100, "tf_model.h5": b"h5" * 50, "README.md": "# tiny"},
        )
        hub.add("acme/pickled", {"config.json": "{}", "pytorch_model.bin": b"pickle"})
        hub.add("acme/tagged", {"config.json": "{}", "model.safetensors": b"st"}, tags=("v1",))
        yield hub


def pull(hub: FakeHub, home: Path, *args: str, **env: str):
    """`mmcli pull ARGS` against the fake hub, online (conftest sets HF_HUB_OFFLINE=1 for the others)."""
    return run_mmcli(
        "pull", *args, env={"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", **env}
    )


def test_safetensors_repo_gets_weights_configs_and_tokenizer_not_pickle(hub, tmp_path, tiny_clip):
    result = pull(hub, tmp_path, REPO)
    assert result.code == 0, result.stderr
    (line,) = result.text.splitlines()  # the snapshot directory is the one result
    snapshot = Path(line)
    assert snapshot.is_relative_to(tmp_path / "hub") and snapshot.parent.name == "snapshots"
    got = {p.name for p in snapshot.iterdir()}
    assert {p.name for p in tiny_clip.iterdir()} <= got
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= got
    assert "pytorch_model.bin" not in got and "tf_model.h5" not in got
    assert "pytorch_model.bin" not in hub.downloaded(REPO)  # never even fetched
    assert "pulling acme/tiny-clip" in result.stderr and "KB" in result.stderr
    assert "skipping 2 files" in result.stderr and "--allow-pickle" in result.stderr
    assert str(snapshot) not in result.stderr  # results on stdout, messages on stderr


def test_allow_pickle_also_gets_the_pickle_weights(hub, tmp_path):
    result = pull(hub, tmp_path, REPO, "--allow-pickle")
    assert result.code == 0, result.stderr
    got = {p.name for p in Path(result.text.strip()).iterdir()}
    assert {"model.safetensors", "pytorch_model.bin"} <= got
    assert "tf_model.h5" not in got  # mmcli runs PyTorch: other frameworks' weights are never fetched


def test_pickle_only_repo_fails_with_the_hint(hub, tmp_path):
    result = pull(hub, tmp_path, "acme/pickled")
    assert result.code == 1
    assert "only pickle weights" in result.stderr and "--allow-pickle" in result.stderr
    assert result.stdout == b"" and "Traceback" not in result.stderr
    assert not hub.downloaded("acme/pickled")
    allowed = pull(hub, tmp_path, "acme/pickled", "--allow-pickle")
    assert allowed.code == 0, allowed.stderr
    assert (Path(allowed.text.strip()) / "pytorch_model.bin").read_bytes() == b"pickle"


def test_unknown_repo_is_a_clear_error(hub, tmp_path):
    result = pull(hub, tmp_path, "acme/nothing-here")
    assert result.code == 1
    assert "no model named 'acme/nothing-here'" in result.stderr
    assert len(result.stderr.splitlines()) == 2 and "Traceback" not in result.stderr  # message + hint
    assert result.stdout == b""


def test_revision_not_found_and_a_tag(hub, tmp_path):
    missing = pull(hub, tmp_path, "acme/tagged", "--revision", "v2")
    assert missing.code == 1 and "no revision 'v2'" in missing.stderr
    tagged = pull(hub, tmp_path, "acme/tagged", "--revision", "v1", "--quiet")
    assert tagged.code == 0 and tagged.stderr == ""  # --quiet: no sizes, no progress
    assert (tmp_path / "hub" / "models--acme--tagged" / "refs" / "v1").is_file()


def test_unreachable_hub_is_one_message(tmp_path):
    result = run_mmcli(
        "pull",
        REPO,
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "0"},
    )
    assert result.code == 1
    assert "could not reach the Hugging Face hub at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_cache_variable_is_honoured(hub, tmp_path):
    cache = tmp_path / "elsewhere"
    result = pull(hub, tmp_path / "home", "acme/tagged", HF_HUB_CACHE=str(cache))
    assert result.code == 0, result.stderr
    assert Path(result.text.strip()).is_relative_to(cache)


def test_pulled_model_runs_offline(hub, tmp_path, image_dir):
    assert pull(hub, tmp_path, REPO, "-q").code == 0
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_mmcli(
        "classify", image_dir / "a.jpg", "-l", "cat,dog", "--offline", "--model", REPO, "-q", env=env
    )
    assert result.code == 0, result.stderr
    (record,) = [json.loads(line) for line in result.text.splitlines()]
    assert record["label"] in ("cat", "dog") and record["model"] == REPO
    # and pulling again with HF_HUB_OFFLINE set finds it in the cache
    again = run_mmcli("pull", REPO, env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert again.code == 0 and "already in the cache" in again.stderr
    missing = run_mmcli("pull", "acme/other", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert missing.code == 1 and "HF_HUB_OFFLINE" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


# -- nothing to download (in process: no network involved) ------------------------------------------------
def test_a_local_directory_prints_its_path(cli, tiny_clip):
    result = cli("pull", tiny_clip)
    assert result.code == 0
    assert result.text.strip() == str(tiny_clip.resolve())
    assert "nothing to download" in result.stderr


def test_an_alias_of_a_bundled_model_prints_its_path(cli):
    result = cli("pull", "shapes-clip")
    if result.code != 0:
        pytest.skip("the bundled models/ are not in this checkout")
    assert Path(result.text.strip()).name == "shapes-clip" and "nothing to download" in result.stderr


def test_a_name_that_is_neither_is_a_usage_error(cli):
    result = cli("pull", "no-such-alias")
    assert result.code == 2 and "clip-vit-b32" in result.stderr and result.stdout == b""
