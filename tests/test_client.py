"""``mmcli.Client``: the CLI's records from Python, in this process and through a real ``mmcli serve``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mmcli import Client
from mmcli.errors import MmcliError, UsageError
from tests.conftest import rounded

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
RED = "samples/shapes-red-circle.png"
BLUE = "samples/shapes-blue-square.jpg"


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(in_process=True, model="shapes-clip") as c:
        yield c


@pytest.fixture(autouse=True)
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def cli_records(cli: Callable[..., Any], *args: str) -> list[dict[str, Any]]:
    result = cli(*args, "--no-server", "-f", "jsonl", "-q")
    assert result.code in (0, 3), result.stderr
    records: list[dict[str, Any]] = result.jsonl()
    return records


def test_classify_takes_paths_as_the_cli_does(client: Client, cli: Callable[..., Any]) -> None:
    got = client.classify([RED, "samples/no-such.png", BLUE], "red circle,blue square", top_k=1)
    expected = cli_records(
        cli,
        "classify",
        RED,
        "samples/no-such.png",
        BLUE,
        "-m",
        "shapes-clip",
        "-l",
        "red circle,blue square",
        "-k",
        "1",
    )
    assert rounded(got) == rounded(expected)
    assert got[1] == {"input": "samples/no-such.png", "error": "no such file or directory"}
    # a directory is walked, a glob matched, as on the command line
    walked = client.classify("samples", ["red circle", "blue square"])
    assert [r["input"] for r in walked] == [
        r["input"] for r in cli_records(cli, "classify", "samples", "-m", "shapes-clip", "-l", "a,b")
    ]


def test_bytes_and_pil_images_give_the_same_records(client: Client) -> None:
    by_path = client.classify(RED, ["red circle", "blue square"])[0]
    data = (ROOT / RED).read_bytes()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    by_bytes, by_pil = client.classify([data, image], ["red circle", "blue square"])
    assert by_bytes["input"] == "images[0]" and by_pil["input"] == "images[1]"
    for record in (by_bytes, by_pil):
        assert rounded({**record, "input": RED}) == rounded(by_path)


def test_generative_tasks_match_the_cli(client: Client, cli: Callable[..., Any]) -> None:
    got = client.caption([RED, BLUE], model="shapes-llava", max_new_tokens=12)
    assert got == cli_records(cli, "caption", RED, BLUE, "-m", "shapes-llava", "--max-new-tokens", "12")
    assert got[0]["caption"] == "a red circle"
    questions = ["What shape is it?", "What color is the shape?"]
    got = client.vqa(RED, questions, model="shapes-blip2")
    assert got == cli_records(cli, "vqa", RED, "-m", "shapes-blip2", "-Q", questions[0], "-Q", questions[1])
    got = client.classify(RED, ["red circle", "blue square"], model="shapes-blip2")
    expected = cli_records(cli, "classify", RED, "-m", "shapes-blip2", "-l", "red circle,blue square")
    assert rounded(got) == rounded(expected)


def test_embed_and_compare_match_the_cli(client: Client, cli: Callable[..., Any]) -> None:
    got = client.embed([RED], texts=["a red circle"])
    assert rounded(got) == rounded(
        cli_records(cli, "embed", RED, "-m", "shapes-clip", "--text", "a red circle")
    )
    assert rounded(client.embed(texts="a red circle")) == rounded(got[:1])
    got = client.compare([RED, BLUE], texts=["blue square"])
    expected = cli_records(cli, "compare", RED, BLUE, "-m", "shapes-clip", "--text", "blue square")
    assert rounded(got) == rounded(expected) and got[0]["target"] == BLUE
    got = client.compare(RED, against=[BLUE, "samples/red-circle.png"], top_k=1)
    expected = cli_records(
        cli, "compare", RED, "-m", "shapes-clip", "-a", BLUE, "-a", "samples/red-circle.png", "-k", "1"
    )
    assert rounded(got) == rounded(expected)


def test_requests_are_checked_as_the_cli_checks_options(client: Client) -> None:
    with pytest.raises(UsageError, match="unknown parameter 'colour'"):
        client.classify(RED, ["a"], colour="red")
    with pytest.raises(UsageError, match="top_k 0 is out of range"):
        client.classify(RED, ["a", "b"], top_k=0)
    with pytest.raises(UsageError, match="template and ensemble cannot be used together"):
        client.classify(RED, ["a", "b"], template="a {}", ensemble="imagenet7")
    with pytest.raises(UsageError, match="seed -1 is out of range"):
        client.caption(RED, model="shapes-llava", sample=True, seed=-1)
    with pytest.raises(UsageError, match="cannot vqa"):
        client.vqa(RED, "What?")  # shapes-clip
    with pytest.raises(TypeError, match="colour"):
        Client(in_process=True, colour="red")


def test_parameters_from_a_form_and_labels_with_commas() -> None:
    from mmcli.modeling import registry
    from mmcli.server.params import parse_call

    resolve = lambda name, revision: registry.resolve(name, revision)  # noqa: E731
    call = parse_call(
        "classify",
        {"images": ["x"], "labels": ["red, the colour", "blue"], "model": "shapes-clip"},
        resolve,
    )
    assert call.task.labels == ["red, the colour", "blue"]
    form = {
        "images": ["x"],
        "labels": ["a,b", "c"],
        "top_k": ["2"],
        "multi_label": ["true"],
        "model": ["shapes-clip"],
    }
    call = parse_call("classify", form, resolve, form=True)
    task: Any = call.task
    assert (task.labels, task.top_k, task.multi_label) == (["a", "b", "c"], 2, True)
    with pytest.raises(UsageError, match="top_k must be a whole number"):
        parse_call("classify", {**form, "top_k": ["two"]}, resolve, form=True)


def test_import_mmcli_stays_light() -> None:
    code = "import sys, mmcli; mmcli.Client; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_through_a_running_server(tmp_path_factory: pytest.TempPathFactory, client: Client) -> None:
    """A real ``mmcli serve`` on a socket of its own: the same records as in this process."""
    folder = tmp_path_factory.mktemp("sock")
    folder.chmod(0o700)
    path = folder / "mmcli.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "mmcli", "serve", "--socket", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        remote = None
        deadline = time.monotonic() + 60
        while remote is None:
            try:
                remote = Client(path, model="shapes-clip")
            except MmcliError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr
                time.sleep(0.2)
        with remote:
            labels = ["red circle", "blue square"]
            assert rounded(remote.classify([RED, "samples/no-such.png"], labels)) == rounded(
                client.classify([RED, "samples/no-such.png"], labels)
            )
            assert rounded(remote.embed(texts=["a red circle"])) == rounded(
                client.embed(texts=["a red circle"])
            )
            assert rounded(remote.compare(RED, against=[BLUE])) == rounded(
                client.compare(RED, against=[BLUE])
            )
            assert [m["name"] for m in remote.status()["models"]] == ["shapes-clip"]
    finally:
        server.terminate()
        server.wait(30)
    with pytest.raises(MmcliError, match="no mmcli server answers"):
        Client(path)
