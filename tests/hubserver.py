"""A fake Hugging Face hub on 127.0.0.1, enough of its HTTP API for ``snapshot_download``.

It serves, for repositories held in memory:

- ``GET /api/models/{repo}[/revision/{rev}]``: the repo info (``sha`` and ``siblings``, with sizes);
- ``GET /api/models/{repo}/tree/{rev}``: the file listing (one page);
- ``HEAD`` and ``GET /{repo}/resolve/{rev}/{path}``: a file, with the headers huggingface_hub reads
  (``X-Repo-Commit``, ``ETag``, ``Content-Length``);

and answers an unknown repo, revision or file with a 404 and the ``X-Error-Code`` the real hub sends.
Use it as a context manager and point a process at it with ``HF_ENDPOINT=hub.url``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit


class Repo:
    def __init__(self, files: Mapping[str, bytes], tags: tuple[str, ...] = ()):
        self.files = dict(files)
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + self.files[name])
        self.sha = digest.hexdigest()
        self.revisions = {"main", self.sha, *tags}

    def oid(self, name: str) -> str:
        return hashlib.sha1(self.files[name]).hexdigest()


class FakeHub:
    """``with FakeHub() as hub: hub.add("org/name", {...}); env HF_ENDPOINT=hub.url``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of each request, for assertions
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, repo_id: str, files: Mapping[str, bytes | str | Path], tags: tuple[str, ...] = ()) -> str:
        """Add a repository; a value is the file's bytes, text, or a local file to read. Returns its sha."""
        data: dict[str, bytes] = {}
        for name, value in files.items():
            if isinstance(value, Path):
                data[name] = value.read_bytes()
            elif isinstance(value, str):
                data[name] = value.encode("utf-8")
            else:
                data[name] = value
        repo = Repo(data, tags)
        self.repos[repo_id] = repo
        return repo.sha

    def add_directory(self, repo_id: str, directory: Path, **extra: bytes | str | Path) -> str:
        """Add every file under ``directory`` (a ``save_pretrained`` folder), plus ``extra`` files."""
        files: dict[str, bytes | str | Path] = {
            p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()
        }
        return self.add(repo_id, {**files, **extra})

    @property
    def url(self) -> str:
        assert self._server is not None, "start the hub first (use it as a context manager)"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def downloaded(self, repo_id: str) -> set[str]:
        """The files of ``repo_id`` fetched with GET (not HEAD)."""
        prefix = f"/{repo_id}/resolve/"
        return {
            path[len(prefix) :].split("/", 1)[1]
            for method, path in self.requests
            if method == "GET" and path.startswith(prefix)
        }

    def __enter__(self) -> FakeHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            self._route(body=True)

        # -- answers --------------------------------------------------------------------------------
        def _send(self, status: int, data: bytes, headers: Mapping[str, str], body: bool) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _json(self, value: object, body: bool) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"}, body)

        def _error(self, code: str, message: str, body: bool) -> None:
            headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
            self._send(404, json.dumps({"error": message}).encode(), headers, body)

        # -- routes ---------------------------------------------------------------------------------
        def _route(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            parts = [p for p in path.split("/") if p]
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(parts[2] + "/" + parts[3], parts[4:], body)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), body)
            else:
                self._send(404, b"not found", {}, body)

        def _repo(self, repo_id: str, revision: str, body: bool) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error("RepoNotFound", "Repository not found", body)
                return None
            if revision not in repo.revisions:
                self._error("RevisionNotFound", f"Invalid rev id: {revision}", body)
                return None
            return repo

        def _api(self, repo_id: str, rest: list[str], body: bool) -> None:
            if not rest or rest[0] == "revision":
                repo = self._repo(repo_id, rest[1] if len(rest) > 1 else "main", body)
                if repo is not None:
                    siblings = [{"rfilename": n, "size": len(d)} for n, d in sorted(repo.files.items())]
                    self._json({"id": repo_id, "sha": repo.sha, "private": False, "siblings": siblings}, body)
            elif rest[0] == "tree" and len(rest) >= 2:
                repo = self._repo(repo_id, rest[1], body)
                if repo is not None:
                    entries = [
                        {"type": "file", "path": n, "size": len(d), "oid": repo.oid(n)}
                        for n, d in sorted(repo.files.items())
                    ]
                    self._json(entries, body)
            else:
                self._send(404, b"not found", {}, body)

        def _resolve(self, repo_id: str, revision: str, name: str, body: bool) -> None:
            repo = self._repo(repo_id, revision, body)
            if repo is None:
                return
            if name not in repo.files:
                self._error("EntryNotFound", f"{name} does not exist", body)
                return
            headers = {
                "X-Repo-Commit": repo.sha,
                "ETag": f'"{repo.oid(name)}"',
                "Content-Type": "application/octet-stream",
            }
            self._send(200, repo.files[name], headers, body)

    return Handler
