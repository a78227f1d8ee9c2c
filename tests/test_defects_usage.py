"""Everyday mistakes end in one line and the documented exit status, found before any weights load; and a
slow server cannot hold a URL input past its timeout."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmcli.errors import InputError
from mmcli.sources import fetch
from tests.conftest import Result, run_mmcli

# -- the fetch timeout bounds the whole download ------------------------------------------------------------
HITS: Counter[str] = Counter()


class Trickle(BaseHTTPRequestHandler):
    """Servers that are slow in every phase: a byte of the body, of the headers, or a redirect at a time."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        HITS[self.path] += 1
        with contextlib.suppress(OSError):  # the client gave up: that is the point
            self.respond()

    def respond(self) -> None:
        route, _, query = self.path.partition("?")
        if route == "/body":  # every read gets a byte within 0.05 s, the whole never arrives in time
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 200\r\n\r\n")
            self.drip(b"x" * 200)
        elif route == "/body-no-length":  # the body ends at the close: a cut body must not count as done
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\n")
            self.drip(b"x" * 200)
        elif route == "/headers":
            self.drip(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n")
        elif route == "/hop":  # a redirect every 0.15 s: each is quick, the chain is not
            time.sleep(0.15)
            self.send_response(302)
            self.send_header("Location", f"/hop?{int(query or 0) + 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    def drip(self, data: bytes) -> None:
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            time.sleep(0.05)


@pytest.fixture(scope="module")
def slow_site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["/body", "/body-no-length", "/headers", "/hop"])
def test_timeout_bounds_the_whole_fetch(slow_site: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "RETRY_BACKOFF", 0.01)
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        fetch.fetch(slow_site + path, timeout=0.6)
    elapsed = time.monotonic() - start
    assert str(info.value) == "download timed out after 0.6 s"
    assert 0.5 < elapsed < 1.2, elapsed
    if path != "/hop":
        assert HITS[path] == 1  # the time is spent: no retry


# -- helpers for the CLI tests ------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "samples" / "shapes-red-circle.png"
NO_MODEL = "no-such-org/no-such-model"  # offline: resolving it is a load error (exit 1), never a usage error


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any weights loading fails the test: the mistake must be found before."""
    from mmcli.modeling import registry

    def refuse(*args: object) -> None:
        raise AssertionError("weights were loaded before the mistake was found")

    monkeypatch.setattr(registry, "create_backend", refuse)


def one_line(result: Result, code: int, *parts: str) -> str:
    """The run printed nothing on stdout and one line ``mmcli: error: ...`` holding ``parts`` on stderr."""
    assert result.code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmcli: error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    assert result.stdout == b""
    return lines[0]


# -- 1: prompt templates ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{} and {}", 'has 2 places in braces; it takes exactly one "{}"'),
        ("{x}", 'write the label\'s place as "{}"'),
        ("{0}", 'write the label\'s place as "{}"'),
        ("{!r}", 'write the label\'s place as "{}"'),
        ("a photo of a {", "is not a valid template: Single '{'"),
        ("a photo of a }", "is not a valid template: Single '}'"),
        ("a photo", 'has no "{}" where the label goes'),
        ("", 'has no "{}" where the label goes'),
    ],
)
def test_bad_template_is_a_usage_error_before_the_model(cli, template: str, problem: str) -> None:
    result = cli("classify", IMAGE, "--labels", "a,b", "--template", template, "--model", NO_MODEL)
    one_line(result, 2, f"--template {template!r}", problem)


def test_doubled_braces_are_literal_braces(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmcli.modeling.backends.clip import ClipBackend

    seen: list[str] = []
    encode = ClipBackend.encode_texts
    monkeypatch.setattr(
        ClipBackend, "encode_texts", lambda self, texts: seen.extend(texts) or encode(self, texts)
    )
    result = cli(
        "classify", IMAGE, "--labels", "red circle,star", "--template", "{{{}}}", "-m", "shapes-clip"
    )
    assert result.code == 0, result.stderr
    assert seen == ["{red circle}", "{star}"]


def test_ensemble_templates_are_checked_before_the_model(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmcli.modeling import tasks

    bad = {"ensembles": {"mine": {"templates": ["a photo of a {}.", "{} next to {}"]}}}
    monkeypatch.setattr(tasks, "load_config", lambda name: bad)
    result = cli("classify", IMAGE, "--labels", "a,b", "--ensemble", "mine", "--model", NO_MODEL)
    one_line(result, 2, "--ensemble mine (", "templates.toml): template '{} next to {}' has 2 places")


def test_every_shipped_ensemble_template_passes_the_check() -> None:
    from mmcli.modeling import registry, tasks

    names = registry.load_config("templates.toml")["ensembles"]
    assert {name: len(tasks.ensemble_templates(name)) for name in names} == {"imagenet80": 80, "imagenet7": 7}


def test_model_template_from_the_config_is_checked(cli, no_weights, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmcli.modeling import registry

    table = registry.aliases() | {
        "odd-clip": {"family": "clip", "checkpoint": "models/shapes-clip", "template": "a {} of {}"}
    }
    monkeypatch.setattr(registry, "aliases", lambda: table)
    result = cli("classify", IMAGE, "--labels", "a,b", "--model", "odd-clip")
    one_line(result, 2, "the model's template (configs/models.toml) 'a {} of {}' has 2 places")


@pytest.mark.parametrize("command", ["vqa", "classify"])
def test_question_template_from_the_config_is_checked(
    cli, no_weights, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from mmcli.modeling import registry

    odd = {"family": "blip2", "checkpoint": "models/shapes-blip2", "question_template": "Q: {} A: {}"}
    table = registry.aliases() | {"odd-blip2": odd}
    monkeypatch.setattr(registry, "aliases", lambda: table)
    labels = ["--labels", "circle,star"] if command == "classify" else []
    result = cli(command, IMAGE, "--question", "What shape is it?", *labels, "--model", "odd-blip2")
    one_line(result, 2, "the question_template of odd-blip2 (configs/models.toml) 'Q: {} A: {}' has 2 places")
    assert "where the question goes" in result.stderr


def test_template_error_exit_status_in_a_subprocess() -> None:
    result = run_mmcli("classify", IMAGE, "--labels", "a,b", "--template", "{} and {}", "--model", NO_MODEL)
    one_line(result, 2, "--template '{} and {}'")


# -- 2: a local model directory with a broken config.json ---------------------------------------------------
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{nope", "is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
        (b"[1, 2]", "is not a JSON object"),
        (b'"clip"', "is not a JSON object"),
        (b'{"model_type": "clip\xff"}', "is not UTF-8 text (byte 20)"),
        (b'{"model_type": ["clip"]}', 'model_type is not a string: ["clip"]'),
        (b"", "is not valid JSON: Expecting value"),
    ],
)
def test_broken_config_json_is_a_load_error_naming_the_file(
    cli, no_weights, tmp_path: Path, content: bytes, problem: str
) -> None:
    (tmp_path / "config.json").write_bytes(content)
    result = cli("classify", IMAGE, "--labels", "a,b", "--model", tmp_path)
    one_line(result, 1, str(tmp_path / "config.json"), problem)


def test_unreadable_config_json(cli, no_weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.json"
    config.write_text("{}")
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path == config:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    result = cli("embed", IMAGE, "--model", tmp_path)
    one_line(result, 1, f"cannot read {config}: Permission denied")


def test_broken_config_json_exit_status_in_a_subprocess(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{nope")
    result = run_mmcli("caption", IMAGE, "--model", tmp_path)
    one_line(result, 1, f"{tmp_path / 'config.json'} is not valid JSON")


# -- 3: label and question files ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b"caf\xe9\nthe\n", "byte 0xe9 at offset 3 (line 1)"),
        (b"\xef\xbb\xbfred circle\nblue square\ncaf\xe9 au lait\n", "byte 0xe9 at offset 29 (line 3)"),
    ],
)
@pytest.mark.parametrize(("command", "option"), [("classify", "--labels-file"), ("vqa", "--questions-file")])
def test_file_that_is_not_utf8_is_a_usage_error(
    cli, tmp_path: Path, command: str, option: str, content: bytes, where: str
) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(content)
    result = cli(command, IMAGE, option, path, "--model", NO_MODEL)
    one_line(result, 2, f"{option} {path} is not UTF-8 text: {where}")


def test_labels_file_bom_and_comments(cli, tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    text = "\ufeffred circle\nblue square   # the second\n# a comment\n   # an indented one\n\ngreen star#2\n"
    path.write_text(text, encoding="utf-8")
    result = cli("classify", IMAGE, "--labels-file", path, "--model", "shapes-clip")
    assert result.code == 0, result.stderr
    assert set(result.jsonl()[0]["scores"]) == {"red circle", "blue square", "green star#2"}
    assert result.jsonl()[0]["label"] == "red circle"


def test_questions_file_bom_and_comment_lines(cli, tmp_path: Path) -> None:
    path = tmp_path / "questions.txt"
    path.write_text("\ufeffWhat shape is it?\n# What color is it?\nIs it # 1?\n", encoding="utf-8")
    result = cli("vqa", IMAGE, "--questions-file", path, "--model", "shapes-blip2", "--max-new-tokens", "3")
    assert result.code == 0, result.stderr
    assert [r["question"] for r in result.jsonl()] == ["What shape is it?", "Is it # 1?"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only\n  # comments\n", "\ufeff"])
@pytest.mark.parametrize(
    ("command", "option", "what"),
    [
        ("classify", "--labels-file", "labels"),
        ("vqa", "--questions-file", "questions"),
    ],
)
def test_file_with_nothing_in_it_is_a_usage_error(
    cli, tmp_path: Path, text: str, command: str, option: str, what: str
) -> None:
    path = tmp_path / "list.txt"
    path.write_text(text, encoding="utf-8")
    result = cli(command, IMAGE, option, path, "--model", NO_MODEL)
    one_line(result, 2, f"{option} {path} holds no {what}, only blank lines and # comments")


def test_duplicate_labels_are_a_usage_error(cli, tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog  # pet\n")
    for args in (["--labels", "cat,dog,cat"], ["--labels", "bird,dog", "--labels-file", path]):
        result = cli("classify", IMAGE, *args, "--model", NO_MODEL)
        one_line(result, 2, "the label ")
    assert "'dog' is given twice" in result.stderr


def test_duplicate_questions_are_a_usage_error(cli) -> None:
    result = cli("vqa", IMAGE, "-Q", "What shape is it?", "-Q", " What shape is it? ", "--model", NO_MODEL)
    one_line(result, 2, "the question 'What shape is it?' is given twice")


@pytest.mark.parametrize("labels", ["", ",,", " , "])
def test_no_labels(cli, labels: str) -> None:
    one_line(cli("classify", IMAGE, "--labels", labels, "--model", NO_MODEL), 2, "no labels")


# -- 4: decoding options ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--sample", "--temperature", "0"],
            "--temperature must be above 0 with --sample; leave out --sample",
        ),
        (["--sample", "--top-p", "0"], "--top-p must be above 0 with --sample"),
        (["--temperature", "inf"], "--temperature inf is not a finite number"),
        (["--sample", "--seed", str(2**64)], f"--seed {2**64} is out of range"),
        (["--sample", "--seed", "-1"], "--seed -1 is out of range"),
    ],
)
@pytest.mark.parametrize("command", ["caption", "vqa"])
def test_decoding_mistakes_are_usage_errors_before_the_model(
    cli, command: str, options: list[str], message: str
) -> None:
    question = ["--question", "What?"] if command == "vqa" else []
    result = cli(command, IMAGE, *question, *options, "--model", NO_MODEL)
    one_line(result, 2, message)


@pytest.mark.parametrize(
    "options",
    [
        ["--top-p", "1.5"],
        ["--top-p", "-0.1"],
        ["--max-new-tokens", "0"],
        ["--num-beams", "0"],
        ["--temperature", "-1"],
        ["--temperature", "nan"],
    ],
)
def test_out_of_range_decoding_options_exit_2(cli, options: list[str]) -> None:
    result = cli("caption", IMAGE, *options, "--model", NO_MODEL)
    assert result.code == 2 and f"Invalid value for '{options[0]}'" in result.stderr, result.stderr


def test_temperature_zero_without_sample_is_greedy(cli) -> None:
    args = ("caption", IMAGE, "--model", "shapes-blip2", "--max-new-tokens", "5")
    greedy = cli(*args)
    assert greedy.code == 0, greedy.stderr
    zero = cli(*args, "--temperature", "0")
    assert zero.code == 0 and zero.jsonl() == greedy.jsonl(), zero.stderr


def test_sampling_with_a_big_seed_runs(cli) -> None:
    result = cli(
        "caption", IMAGE, "-m", "shapes-blip2", "--sample", "--seed", str(2**64 - 1), "--max-new-tokens", "3"
    )
    assert result.code == 0, result.stderr


# -- 6: other everyday mistakes ------------------------------------------------------------------------------
def test_empty_question_for_generative_classify(cli, no_weights) -> None:
    result = cli("classify", IMAGE, "--labels", "a,b", "--question", " ", "--model", "shapes-blip2")
    one_line(result, 2, "--question is empty")


@pytest.mark.parametrize("command", ["embed", "compare"])
@pytest.mark.parametrize("text", ["", "  "])
def test_empty_text_is_a_usage_error(cli, command: str, text: str) -> None:
    result = cli(command, IMAGE, "--text", "a dog", "--text", text, "--model", NO_MODEL)
    one_line(result, 2, "--text is empty")


@pytest.mark.parametrize("extra", [[], ["--text", "a dog", "--against", str(IMAGE)]])
def test_compare_needs_text_or_against_not_both(cli, extra: list[str]) -> None:
    one_line(cli("compare", IMAGE, *extra, "--model", NO_MODEL), 2, "give either --text")


@pytest.mark.parametrize(
    ("option", "value"), [("--top-k", "0"), ("--threshold", "2"), ("--threshold", "-0.5")]
)
def test_out_of_range_classify_options_exit_2(cli, option: str, value: str) -> None:
    result = cli("classify", IMAGE, "--labels", "a,b", option, value, "--model", NO_MODEL)
    assert result.code == 2 and f"Invalid value for '{option}" in result.stderr, result.stderr


def test_compare_top_k_zero_exit_2(cli) -> None:
    result = cli("compare", IMAGE, "--text", "a", "--top-k", "0", "--model", NO_MODEL)
    assert result.code == 2 and "Invalid value for '--top-k'" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["classify", IMAGE, "--bogus"], "No such option: --bogus (see mmcli classify --help)"),
        (["classify", IMAGE, "--decode-timeout", "0"], "Invalid value for '--decode-timeout'"),
        (["caption", IMAGE, "--num-beams", "0"], "Invalid value for '--num-beams'"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_bad_options_are_one_line_in_a_subprocess(args: list[str], words: str) -> None:
    args = [str(a) for a in args]
    result = run_mmcli(*args)
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mmcli: error: "), result.stderr
    assert words in result.stderr
