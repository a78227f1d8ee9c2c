"""The command line: input kinds, output formats, exit statuses, stdout/stderr split, lazy imports."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import random_image, run_mmcli

IMAGES = ["a.jpg", "b.png", "c.webp", "sub/d.jpg", "sub/e.bmp"]


def names(records, root):
    return [str(r["input"]).replace(str(root) + "/", "") for r in records]


# -- input kinds -------------------------------------------------------------------------------------
def test_directory_is_walked_recursively_sorted_images_only(cli, tiny_clip, image_dir):
    result = cli("classify", image_dir, "--labels", "cat,dog", "--model", tiny_clip)
    assert result.code == 0, result.stderr
    assert names(result.jsonl(), image_dir) == IMAGES


def test_glob_pattern(cli, tiny_clip, image_dir):
    result = cli("classify", f"{image_dir}/**/*.jpg", "--labels", "cat,dog", "--model", tiny_clip)
    assert names(result.jsonl(), image_dir) == ["a.jpg", "sub/d.jpg"]


def test_paths_on_stdin(cli, tiny_clip, image_dir):
    stdin = f"{image_dir}/b.png\n{image_dir}/a.jpg\n".encode()
    result = cli("classify", "-", "--labels", "cat,dog", "--model", tiny_clip, stdin=stdin)
    assert names(result.jsonl(), image_dir) == ["b.png", "a.jpg"]


def test_nul_separated_paths_on_stdin(cli, tiny_clip, image_dir, tmp_path):
    odd = tmp_path / "new\nline.png"
    random_image(9, (32, 32)).save(odd)
    stdin = f"{image_dir}/a.jpg\0{odd}\0".encode()
    result = cli("classify", "-0", "-", "--labels", "cat,dog", "--model", tiny_clip, stdin=stdin)
    assert result.code == 0, result.stderr
    assert [r["input"] for r in result.jsonl()] == [f"{image_dir}/a.jpg", str(odd)]


def test_mixed_inputs_keep_their_order(cli, tiny_clip, image_dir):
    result = cli(
        "classify", f"{image_dir}/sub", f"{image_dir}/a.jpg", "--labels", "x,y", "--model", tiny_clip
    )
    assert names(result.jsonl(), image_dir) == ["sub/d.jpg", "sub/e.bmp", "a.jpg"]


# -- bad inputs in one batch ---------------------------------------------------------------------------
def test_bad_inputs_become_error_records_and_the_batch_goes_on(cli, tiny_clip, image_dir, tmp_path):
    good = image_dir / "a.jpg"
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.jpg").write_bytes(bytes(range(256)) * 8)
    bad = ["empty.jpg", "text.png", "cut.jpg", "noise.jpg", "missing.jpg"]
    args = [good, *(tmp_path / b for b in bad), image_dir / "b.png"]
    result = cli("classify", *args, "--labels", "cat,dog", "--model", tiny_clip, "--batch-size", "3")
    assert result.code == 3
    records = result.jsonl()
    assert [r["input"] for r in records] == [str(a) for a in args]
    assert "label" in records[0] and "label" in records[-1]
    for record in records[1:-1]:
        assert set(record) == {"input", "error"} and record["error"]
        assert f"skipping {record['input']}: {record['error']}" in result.stderr
    assert "2 done, 5 failed" in result.stderr


def test_strict_stops_at_the_first_failure(cli, tiny_clip, image_dir, tmp_path):
    (tmp_path / "bad.jpg").write_text("x")
    args = [image_dir / "a.jpg", tmp_path / "bad.jpg", image_dir / "b.png"]
    result = cli("classify", *args, "--labels", "cat,dog", "--model", tiny_clip, "--strict", "-b", "1")
    assert result.code == 3
    assert [r["input"] for r in result.jsonl()] == [str(a) for a in args[:2]]
    assert "--strict" in result.stderr


# -- formats --------------------------------------------------------------------------------------------
def test_json_format_is_one_valid_array(cli, tiny_clip, image_dir):
    result = cli("classify", image_dir, "--labels", "cat,dog", "--model", tiny_clip, "--format", "json")
    data = json.loads(result.stdout)
    assert [d["input"] for d in data] == [str(image_dir / n) for n in IMAGES]


def test_csv_format_has_a_header_and_one_row_per_input(cli, tiny_clip, image_dir, tmp_path):
    (tmp_path / "bad.jpg").write_text("x")
    result = cli(
        "classify",
        image_dir / "a.jpg",
        tmp_path / "bad.jpg",
        "--labels",
        "cat,dog",
        "--model",
        tiny_clip,
        "-f",
        "csv",
    )
    rows = list(csv.DictReader(io.StringIO(result.text)))
    assert rows[0]["label"] in ("cat", "dog") and float(rows[0]["score"]) > 0
    assert set(json.loads(rows[0]["scores"])) == {"cat", "dog"}
    assert rows[1]["error"] and rows[1]["label"] == ""


def test_table_format_is_readable(cli, tiny_clip, image_dir):
    result = cli("classify", image_dir / "a.jpg", "--labels", "cat,dog", "--model", tiny_clip, "-f", "table")
    assert "a.jpg" in result.text and "label" in result.text and "score" in result.text


def test_output_file_format_from_extension(cli, tiny_clip, image_dir, tmp_path):
    out = tmp_path / "out.csv"
    result = cli("classify", image_dir / "a.jpg", "--labels", "cat,dog", "--model", tiny_clip, "-o", out)
    assert result.code == 0 and result.stdout == b""
    assert out.read_text().startswith("input,label,score")


def test_odd_bytes_in_file_names_survive_jsonl(cli, tiny_clip, tmp_path):
    import os

    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    random_image(3, (32, 32)).save(os.fsdecode(raw))
    result = cli("classify", "-", "--labels", "a,b", "--model", tiny_clip, stdin=raw + b"\n")
    assert result.code == 0, result.stderr
    (record,) = result.jsonl()
    assert os.fsencode(record["input"]) == raw


# -- exit statuses and the stdout / stderr split, in a real process -----------------------------------------
def test_exit_0_results_on_stdout_messages_on_stderr(tiny_clip, image_dir):
    result = run_mmcli("classify", image_dir / "a.jpg", "--labels", "cat,dog", "--model", tiny_clip)
    assert result.code == 0
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["label"] in ("cat", "dog")
    assert "classify: 1 done" in result.stderr and "{" not in result.stderr


def test_exit_3_when_some_inputs_fail(tiny_clip, image_dir):
    result = run_mmcli(
        "classify",
        image_dir / "a.jpg",
        image_dir / "nope.jpg",
        "--labels",
        "a,b",
        "--model",
        tiny_clip,
        "--quiet",
    )
    assert result.code == 3
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr == ""  # --quiet


@pytest.mark.parametrize(
    "args",
    [
        ["classify", "x.jpg", "--no-such-option"],
        ["classify", "x.jpg"],  # no labels
        ["classify", "x.jpg", "--labels", "a", "--model", "no-such-alias"],
        ["classify", "x.jpg", "--labels", "a", "--device", "tpu"],
        ["nosuchcommand"],
    ],
)
def test_exit_2_on_usage_errors(args, tiny_clip):
    result = run_mmcli(*args)
    assert result.code == 2, result.stderr
    assert result.stdout == b""
    assert result.stderr.strip()


def test_unknown_model_lists_the_aliases():
    result = run_mmcli("classify", "x.jpg", "--labels", "a", "--model", "no-such-alias")
    assert "clip-vit-b32" in result.stderr and "local directory" in result.stderr


def test_exit_1_when_the_device_is_missing(tiny_clip, image_dir):
    result = run_mmcli(
        "classify", image_dir / "a.jpg", "--labels", "a,b", "--model", tiny_clip, "--device", "cuda"
    )
    assert result.code == 1
    assert "available devices: cpu" in result.stderr
    assert result.stdout == b""


def test_exit_1_when_the_model_cannot_load(tmp_path, image_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "clip"}))
    result = run_mmcli("classify", image_dir / "a.jpg", "--labels", "a,b", "--model", broken)
    assert result.code == 1
    assert "could not load" in result.stderr and "Traceback" not in result.stderr


def test_hub_model_offline_is_a_one_line_message(image_dir):
    result = run_mmcli(
        "classify",
        image_dir / "a.jpg",
        "--labels",
        "a,b",
        "--model",
        "nobody/nothing",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.code == 1
    assert "not in the local cache" in result.stderr and "Traceback" not in result.stderr


def test_pickle_weights_need_allow_pickle(tmp_path, tiny_clip, image_dir):
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in tiny_clip.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, pickled / f.name)
    torch.save(load_file(tiny_clip / "model.safetensors"), pickled / "pytorch_model.bin")
    refused = run_mmcli("classify", image_dir / "a.jpg", "--labels", "a,b", "--model", pickled)
    assert refused.code == 1 and "--allow-pickle" in refused.stderr
    allowed = run_mmcli(
        "classify", image_dir / "a.jpg", "--labels", "a,b", "--model", pickled, "--allow-pickle"
    )
    assert allowed.code == 0, allowed.stderr


# -- lazy imports -----------------------------------------------------------------------------------------
def _imported_modules(*args: str, env: dict[str, str] | None = None) -> set[str]:
    import os

    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mmcli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    return {
        line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    }


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["classify", "--help"],
        ["embed", "--help"],
        ["models"],
        ["doctor", "--help"],
        ["pull", "--help"],
    ],
)
def test_help_imports_neither_torch_nor_transformers(args):
    modules = _imported_modules(*args)
    assert "mmcli.cli" in modules  # the probe itself works
    assert "torch" not in modules and "transformers" not in modules
    assert "huggingface_hub" not in modules


def test_shell_completion_imports_neither_torch_nor_transformers():
    env = {"_MMCLI_COMPLETE": "complete_bash", "COMP_WORDS": "mmcli cla", "COMP_CWORD": "1"}
    modules = _imported_modules(env=env)
    assert "mmcli.cli" in modules
    assert "torch" not in modules and "transformers" not in modules


def test_models_lists_aliases_with_capabilities(cli):
    result = cli("models", "--format", "jsonl")
    rows = {r["alias"]: r for r in result.jsonl()}
    assert rows["clip-vit-b32"]["checkpoint"] == "openai/clip-vit-base-patch32"
    assert "encode_image" in rows["clip-vit-b32"]["capabilities"]
    assert "classify" in rows["clip-vit-b32"]["default_for"]


def test_offline_flag_uses_only_the_cache(image_dir):
    env = {"HF_HUB_OFFLINE": "0"}  # --offline alone must keep mmcli off the network
    result = run_mmcli(
        "classify", image_dir / "a.jpg", "--labels", "a,b", "--model", "clip-vit-b32", "--offline", env=env
    )
    assert result.code == 1
    assert "not in the local cache" in result.stderr
    assert "not reachable" not in result.stderr  # it did not even look for the hub


def test_unreachable_hub_switches_to_the_cache_and_says_so(image_dir):
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on port 9
    result = run_mmcli("classify", image_dir / "a.jpg", "--labels", "a,b", "--model", "clip-vit-b32", env=env)
    assert result.code == 1
    assert "not reachable: using the local cache only" in result.stderr
    assert "Retrying" not in result.stderr


def test_models_lists_the_aliases_people_run_in_2026(cli):
    rows = {r["alias"]: r for r in cli("models", "--format", "jsonl").jsonl()}
    generative = {
        "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
        "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
        "internvl3-1b": "OpenGVLab/InternVL3-1B-hf",
        "smolvlm2-2.2b": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        "florence-2-base": "florence-community/Florence-2-base",
        "paligemma2-3b": "google/paligemma2-3b-mix-224",
        "gemma-3-4b": "google/gemma-3-4b-it",
        "instructblip-vicuna-7b": "Salesforce/instructblip-vicuna-7b",
        "blip-caption-base": "Salesforce/blip-image-captioning-base",
        "idefics-9b": "HuggingFaceM4/idefics-9b-instruct",
        "llama-3.2-11b-vision": "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "deepseek-vl-1.3b": "deepseek-community/deepseek-vl-1.3b-chat",
    }
    for alias, checkpoint in generative.items():
        assert rows[alias]["checkpoint"] == checkpoint
        assert set(rows[alias]["capabilities"]) == {"generate", "score_text"}
    for alias in ("siglip2-base", "align-base"):
        assert set(rows[alias]["capabilities"]) == {"encode_image", "encode_text"}
    # A capability mistake is found from the alias alone, before anything downloads.
    refused = cli("embed", "x.jpg", "--model", "qwen2.5-vl-3b")
    assert refused.code == 2 and "cannot embed" in refused.stderr


def test_a_file_given_as_the_model_is_a_usage_error_not_a_hub_lookup(cli):
    """samples/x.png looks like org/name: it must not be sent to the hub as one."""
    image = Path(__file__).resolve().parent.parent / "samples" / "shapes-red-circle.png"
    for args in (["classify", image, "--labels", "a,b", "--model", image], ["models", "--info", image]):
        result = cli(*args)
        assert result.code == 2, result.stderr
        assert result.stderr.startswith(f"mmcli: error: {image} is a file, not a model")
        assert "hub" not in result.stderr.splitlines()[0]
