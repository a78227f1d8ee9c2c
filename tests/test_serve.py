"""mmcli serve through real processes: a server process on a socket of the test's own, CLI clients in this
process (their socket is real) and in subprocesses; the records with and without the server compared."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import Result

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
LABELS = SAMPLES / "shapes-labels.txt"


class Server:
    def __init__(self, sock: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.sock, self.proc, self.log = sock, proc, log

    def status(self) -> dict:
        from mmcli.run.remote.client import Remote

        remote = Remote.open(self.sock)
        try:
            return remote.status()
        finally:
            remote.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(directory: Path, *options: str) -> Server:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = directory / "mmcli.sock"
    log = directory / "server.log"
    env = {**os.environ, "MMCLI_SOCKET": str(sock), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmcli", "serve", *options],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115 - the server's life is the fixture's
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "listening on" in log.read_text(errors="replace"):
            return Server(sock, proc, log)
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the server did not start")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # Under /tmp itself, not pytest's 0700 directory: the other-user test opens the way to the socket.
    base = Path(tempfile.mkdtemp(prefix="mmcli-serve-"))
    srv = start_server(base / "run", "--keep-alive", "3s", "--batch-wait", "50ms")
    yield srv
    srv.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def via(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """This test's CLI runs find the module's server."""
    monkeypatch.setenv("MMCLI_SOCKET", str(server.sock))
    return server


def both(cli: Callable[..., Result], *args: str) -> tuple[Result, Result]:
    return cli(*args), cli(*args, "--no-server")


TASKS = [
    ("classify", "--model", "shapes-clip", "--labels-file", str(LABELS), "--top-k", "3"),
    ("classify", "--model", "shapes-llava", "--labels", "red,green,blue"),
    ("caption", "--model", "shapes-llava"),
    ("vqa", "--model", "shapes-blip2", "--question", "What color is it?", "--question", "What shape?"),
    ("embed", "--model", "shapes-clip", "--text", "a red circle"),
    ("compare", "--model", "shapes-clip", "--text", "a red circle", "--top-k", "3"),
]


@pytest.mark.parametrize("args", TASKS, ids=lambda a: f"{a[0]}-{a[2]}")
def test_the_same_records_with_and_without_the_server(via: Server, cli, args) -> None:
    served, local = both(cli, args[0], str(SAMPLES), *args[1:], "--format", "jsonl", "--no-cache")
    assert served.code == local.code == 0, served.stderr + local.stderr
    assert served.jsonl() == local.jsonl() and served.jsonl()
    assert "via server (pid" in served.stderr and "via server" not in local.stderr


def test_compare_against_and_outputs_through_the_server(via: Server, cli, tmp_path: Path) -> None:
    query = SAMPLES / "shapes-red-circle.png"
    served, local = both(
        cli, "compare", str(query), "--against", str(SAMPLES), "--model", "shapes-clip", "-f", "jsonl"
    )
    assert served.code == local.code == 0 and served.jsonl() == local.jsonl()
    for name in ("a.csv", "b.csv"):
        extra = ["--no-server"] if name == "b.csv" else []
        out = tmp_path / name
        result = cli(
            "classify", str(SAMPLES), "--model", "shapes-clip", "--labels", "red,blue", "-o", str(out), *extra
        )
        assert result.code == 0, result.stderr
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_failed_inputs_are_the_same_error_records(via: Server, cli, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "fine.png")
    args = (
        "classify",
        str(tmp_path),
        str(tmp_path / "missing.png"),
        "--model",
        "shapes-clip",
        "--labels",
        "red,blue",
    )
    served, local = both(cli, *args, "-f", "jsonl")
    assert served.code == local.code == 3  # some inputs failed
    assert served.jsonl() == local.jsonl()
    assert sum("error" in r for r in served.jsonl()) == 3


def test_sidecars_are_written_by_the_client(via: Server, cli, tmp_path: Path) -> None:
    for name in ("served", "local"):
        folder = tmp_path / name
        folder.mkdir()
        for image in ("shapes-red-circle.png", "shapes-blue-square.jpg"):
            (folder / image).write_bytes((SAMPLES / image).read_bytes())
    extra = {"served": [], "local": ["--no-server"]}
    for name in ("served", "local"):
        result = cli(
            "caption", str(tmp_path / name), "--model", "shapes-llava", "--sidecar", "txt", "-q", *extra[name]
        )
        assert result.code == 0, result.stderr
    for stem in ("shapes-red-circle", "shapes-blue-square"):
        served = (tmp_path / "served" / f"{stem}.txt").read_text()
        assert served == (tmp_path / "local" / f"{stem}.txt").read_text() and served
    assert (tmp_path / "served" / ".mmcli-sidecars.jsonl").is_file()


def test_the_client_path_never_imports_torch(via: Server) -> None:
    code = (
        "import sys\nfrom mmcli.cli import main\n"
        "try:\n    main(['classify', sys.argv[1], '--model', 'shapes-clip', '--labels', 'red,blue', '-q', '-f', 'jsonl'])\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))\n"
    )
    env = {**os.environ, "MMCLI_SOCKET": str(via.sock)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(SAMPLES / "shapes-red-circle.png")],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert json.loads(lines[0])["label"] == "red"
    assert lines[-1] == "[]"


def test_socket_and_directory_are_the_users_only(via: Server) -> None:
    assert stat.S_IMODE(os.stat(via.sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(via.sock.parent).st_mode) == 0o700
    assert os.stat(via.sock).st_uid == os.getuid()


def test_a_socket_others_may_write_is_not_used(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(shared / "mmcli.sock"))
    listener.listen()
    try:
        monkeypatch.setenv("MMCLI_SOCKET", str(shared / "mmcli.sock"))
        result = cli(
            "classify",
            str(SAMPLES / "shapes-red-circle.png"),
            "--model",
            "shapes-clip",
            "--labels",
            "red,blue",
        )
    finally:
        listener.close()
    assert result.code == 0
    assert "not using the mmcli server" in result.stderr and "may be written by others" in result.stderr
    assert "via server" not in result.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file to another user")
def test_a_socket_another_user_owns_is_not_used(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(theirs / "mmcli.sock"))
    listener.listen()
    os.chown(theirs, 65534, 65534)
    os.chown(theirs / "mmcli.sock", 65534, 65534)
    try:
        monkeypatch.setenv("MMCLI_SOCKET", str(theirs / "mmcli.sock"))
        result = cli(
            "classify", str(SAMPLES / "shapes-red-circle.png"), "--model", "shapes-clip", "--labels", "red"
        )
    finally:
        listener.close()
    assert result.code == 0 and "via server" not in result.stderr
    assert "belongs to uid 65534, not to you" in result.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as another user")
def test_another_users_process_is_refused(via: Server) -> None:
    os.chmod(via.sock.parent.parent, 0o711)
    os.chmod(via.sock.parent, 0o711)
    os.chmod(via.sock, 0o666)  # let the other user reach it: the server's own check must refuse it
    try:
        code = (  # everything imported before the process drops to nobody, who may not read the venv
            "import os, socket, sys\nfrom mmcli.run.remote import protocol\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "try:\n    protocol.send(s, {'id': 0, 'op': 'hello'})\n"
            "except BrokenPipeError:\n    pass  # refused already: its answer is waiting\n"
            "print(protocol.recv(s.makefile('rb'))[0])\n"
        )
        proc = subprocess.run([sys.executable, "-c", code, str(via.sock)], capture_output=True, timeout=60)
    finally:
        os.chmod(via.sock.parent.parent, 0o700)
        os.chmod(via.sock.parent, 0o700)
        os.chmod(via.sock, 0o600)
    assert "'ok': False" in proc.stdout.decode() and "belongs to uid 65534" in proc.stdout.decode(), (
        proc.stderr
    )
    assert via.proc.poll() is None


def test_a_second_server_on_the_socket_refuses_and_names_the_first(via: Server) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mmcli", "serve"],
        capture_output=True,
        env={**os.environ, "MMCLI_SOCKET": str(via.sock)},
        timeout=60,
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert f"another mmcli serve (pid {via.proc.pid})" in err and len(err.strip().splitlines()) <= 2


def test_status_and_keep_alive_unload(via: Server, cli) -> None:
    assert cli("classify", str(SAMPLES), "--model", "shapes-clip", "--labels", "red", "-q").code == 0
    status = via.status()
    assert status["pid"] == via.proc.pid
    assert any(m["label"].endswith("shapes-clip") and m["memory_bytes"] > 0 for m in status["models"])
    shown = cli("serve", "--status")
    assert shown.code == 0 and f"pid {via.proc.pid}" in shown.text and "shapes-clip" in shown.text
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and via.status()["models"]:
        time.sleep(0.25)
    assert via.status()["models"] == []  # --keep-alive 3s
    assert "unloaded" in via.log.read_text() and "idle for" in via.log.read_text()


def test_status_and_stop_without_a_server(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCLI_SOCKET", str(tmp_path / "nobody.sock"))
    for option in ("--status", "--stop"):
        result = cli("serve", option)
        assert result.code == 1 and "no mmcli server answers" in result.stderr


def test_concurrent_clients_share_forward_passes(via: Server) -> None:
    from mmcli.commands.classify import ContrastiveClassify
    from mmcli.run.remote.client import Remote
    from mmcli.server.engine import ImageInput, Limits, ModelKey

    data = (SAMPLES / "shapes-red-circle.png").read_bytes()
    key = ModelKey("shapes-clip")
    task = ContrastiveClassify(["red", "blue"], None, None, None, False, 0.5)
    warm = Remote.open(via.sock)
    warm.run(key, task, [ImageInput("warm", data)], Limits(use_cache=False))
    before = via.status()["forward_passes"]
    clients, rounds = 8, 4
    labels: list[str] = []
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        remote = Remote.open(via.sock)
        barrier.wait()
        for r in range(rounds):
            result = remote.run(key, task, [ImageInput(f"{i}-{r}", data)], Limits(use_cache=False))
            labels.append(result.items[0].records[0]["label"])
        remote.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    warm.close()
    passes = via.status()["forward_passes"] - before
    assert labels == ["red"] * clients * rounds
    assert passes <= clients * rounds // 2, passes  # 32 one-image requests, at most 16 forward passes


def test_http_needs_a_token_off_loopback(cli) -> None:
    result = cli("serve", "--http", "0.0.0.0:8765")
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and "needs a token" in lines[0] and len(lines) == 2  # the error and its hint


def many_images(folder: Path, n: int) -> Path:
    folder.mkdir()
    colors = ["red", "green", "blue", "yellow"]
    for i in range(n):
        Image.new("RGB", (24 + i % 7, 24), colors[i % 4]).save(folder / f"img{i:03d}.png")
    return folder


def wait_for_lines(path: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never had {n} lines")


def test_resume_through_the_server_after_the_client_is_killed(via: Server, cli, tmp_path: Path) -> None:
    images = many_images(tmp_path / "images", 120)
    out, reference = tmp_path / "out.jsonl", tmp_path / "ref.jsonl"
    args = [
        "classify",
        str(images),
        "--model",
        "shapes-clip",
        "--labels",
        "red,green,blue",
        "--batch-size",
        "4",
        "-q",
    ]
    env = {**os.environ, "MMCLI_SOCKET": str(via.sock)}
    proc = subprocess.Popen([sys.executable, "-m", "mmcli", *args, "-o", str(out)], env=env)
    wait_for_lines(out, 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.read_bytes().count(b"\n")
    assert 8 <= partial < 120
    resumed = cli(*args, "-o", str(out))
    assert resumed.code == 0, resumed.stderr
    assert cli(*args, "-o", str(reference), "--no-server").code == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [json.loads(line) for line in reference.read_text().splitlines()]
    # every input once, in order, with the same keys and labels; the scores of the inputs done after the kill
    # were computed in batches that start elsewhere (as after a kill without the server): equal to float32 noise
    assert [(r["input"], r["key"], r["label"]) for r in got] == [
        (r["input"], r["key"], r["label"]) for r in want
    ]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(got, want, strict=True))


def captioning_client(srv: Server, folder: Path, n: int) -> tuple[subprocess.Popen[bytes], Path]:
    """A CLI client captioning ``n`` images through ``srv``, two per request, once its first records are out."""
    images = many_images(folder / "images", n)
    out = folder / "out.jsonl"
    command = ["caption", str(images), "--model", "shapes-llava", "--batch-size", "2", "-o", str(out), "-q"]
    client = subprocess.Popen(
        [sys.executable, "-m", "mmcli", *command],
        env={**os.environ, "MMCLI_SOCKET": str(srv.sock)},
        stderr=subprocess.PIPE,
    )
    wait_for_lines(out, 4)
    return client, out


def test_a_client_whose_server_dies_exits_promptly(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "run")
    try:
        client, _ = captioning_client(srv, tmp_path, 400)
        srv.proc.kill()
        started = time.monotonic()
        _, err = client.communicate(timeout=20)
        assert time.monotonic() - started < 10
        assert client.returncode == 1
        message = err.decode().strip().splitlines()
        assert len(message) == 2 and "server" in message[0] and "went away" in message[0], message
        assert "re-run to resume" in message[1]
    finally:
        srv.stop()


def test_sigterm_finishes_the_requests_in_flight(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "run")
    client, out = captioning_client(srv, tmp_path, 300)
    try:
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0
        log = srv.log.read_text()
        assert "finishing the requests in flight" in log and log.rstrip().endswith("stopped")
        client.communicate(timeout=30)
        assert client.returncode == 1  # told the server went away or is stopping: one line, records kept
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert records and all("caption" in r for r in records)
    finally:
        client.kill()
        srv.stop()


def test_server_false_in_the_config_file_runs_in_the_process(via: Server, cli) -> None:
    Path(os.environ["MMCLI_CONFIG"]).write_text("[defaults]\nserver = false\n")
    args = (
        "classify",
        str(SAMPLES / "shapes-red-circle.png"),
        "--model",
        "shapes-clip",
        "--labels",
        "red,blue",
    )
    local = cli(*args)
    assert local.code == 0 and "via server" not in local.stderr
    Path(os.environ["MMCLI_CONFIG"]).write_text("[defaults]\nserver = true\n")
    assert "via server" in cli(*args).stderr


def test_doctor_shows_the_server(via: Server, cli) -> None:
    image = str(SAMPLES / "shapes-red-circle.png")
    assert cli("classify", image, "--model", "shapes-clip", "--labels", "a").code == 0
    report = json.loads(cli("doctor", "--format", "json").stdout)
    assert report["server"]["socket"] == str(via.sock) and report["server"]["pid"] == via.proc.pid
    assert "via server" not in cli("doctor").stderr and f"pid {via.proc.pid}" in cli("doctor").text
