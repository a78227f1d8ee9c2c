"""Writers, format choice, and the table that turns third-party errors into one-line messages."""

from __future__ import annotations

import io
import json

import httpx2
import pytest
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mmcli.errors import ModelLoadError, explain_load_error
from mmcli.sinks import output


def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x/y"))


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (RepositoryNotFoundError("404", response=_response(404)), "no model named"),
        (GatedRepoError("403", response=_response(403)), "gated"),
        (RevisionNotFoundError("404", response=_response(404)), "revision"),
        (LocalEntryNotFoundError("not cached"), "not in the local cache"),
        (ConnectionError("Name or service not known"), "could not reach"),
        (
            OSError("x does not appear to have a file named model.safetensors but has pytorch_model.bin"),
            "--allow-pickle",
        ),
        (ValueError("please pass trust_remote_code=True"), "--trust-remote-code"),
        (RuntimeError("size mismatch\nmore detail"), "could not load x/y: size mismatch"),
    ],
)
def test_hub_and_load_errors_become_one_actionable_line(exc, says):
    err = explain_load_error(exc, "x/y")
    assert isinstance(err, ModelLoadError)
    assert says in str(err)
    assert err.message.count("\n") == 0


def test_format_defaults(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert output.choose_format(None, None, output.FORMATS) == "table"
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert output.choose_format(None, None, output.FORMATS) == "jsonl"
    assert output.choose_format(None, "x.CSV", output.FORMATS) == "csv"
    assert output.choose_format(None, "x.unknown", output.FORMATS) == "jsonl"
    with pytest.raises(Exception, match="npy"):
        output.choose_format("npy", None, ("jsonl", "csv"))


def test_json_writer_is_valid_with_zero_one_and_many_records():
    for n in (0, 1, 3):
        buf = io.BytesIO()
        writer = output.JsonWriter(buf)
        for i in range(n):
            writer.write({"input": str(i)})
        writer.close()
        assert json.loads(buf.getvalue()) == [{"input": str(i)} for i in range(n)]


def test_jsonl_escapes_undecodable_file_name_bytes():
    buf = io.BytesIO()
    output.JsonlWriter(buf).write({"input": "caf\udce9.jpg"})
    line = buf.getvalue().decode("utf-8")  # valid UTF-8, so jq can read it
    assert json.loads(line)["input"] == "caf\udce9.jpg"


def test_load_options_reach_from_pretrained():
    from mmcli.modeling.backends.base import LoadOptions
    from mmcli.modeling.backends.clip import ClipBackend
    from mmcli.modeling.registry import ModelSpec
    from mmcli.modeling.runtime import resolve

    spec = ModelSpec(name="x", family="clip", checkpoint="org/name", revision="v1")
    backend = ClipBackend.__new__(ClipBackend)
    backend.spec, backend.runtime = spec, resolve("cpu", "fp32")
    backend.options = LoadOptions(trust_remote_code=True, offline=True)
    kwargs = backend.from_pretrained_kwargs()
    assert kwargs == {"revision": "v1", "trust_remote_code": True, "local_files_only": True}
