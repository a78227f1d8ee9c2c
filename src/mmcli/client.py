"""``mmcli.Client``: the CLI's tasks from Python, returning the records the CLI prints.

    with Client(model="shapes-clip") as client:
        client.classify(["photo.jpg"], ["red circle", "blue square"])

By default the client talks to a running ``mmcli serve`` over its Unix socket (models stay loaded between
calls and programs); ``in_process=True`` loads the models in this process instead. Either way a request
is checked as the CLI checks its options (``mmcli.server.params``), and images may be paths (files,
directories, globs), http(s) URLs, bytes or PIL images.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

from mmcli.errors import UsageError

_LIMITS = ("max_pixels", "decode_memory", "decode_timeout", "use_cache", "cache_dir")


class Client:
    """One connection to ``mmcli serve`` (or an engine of its own, with ``in_process=True``).

    ``model`` is the default model of every call (a call's ``model=`` wins); the other keyword arguments
    are the CLI's load options (``revision``, ``device``, ``dtype``, ``device_map``, ``quantize``,
    ``trust_remote_code``, ``allow_pickle``, ``offline``) and image limits (``max_pixels``,
    ``decode_memory``, ``decode_timeout``, ``use_cache``, ``cache_dir``).
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        in_process: bool = False,
        model: str | None = None,
        **options: Any,
    ) -> None:
        from mmcli.server.engine import Limits, ModelKey

        fields = {f.name for f in dataclasses.fields(ModelKey)} - {"name"}
        unknown = set(options) - fields - set(_LIMITS)
        if unknown:
            raise TypeError(f"Client() got unexpected options: {', '.join(sorted(unknown))}")
        if in_process and socket is not None:
            raise UsageError("give a socket to talk to a server, or in_process=True, not both")
        self.model = model
        self.key = ModelKey(name="", **{k: v for k, v in options.items() if k in fields})
        self.limits = Limits(**{k: v for k, v in options.items() if k in _LIMITS})
        self._specs: dict[tuple[str, str | None], Any] = {}
        self.runner: Any
        if in_process:
            from mmcli.server.engine import Engine

            self.runner = Engine(keep_alive=None)
        else:
            self.runner = _connect(socket)

    # -- tasks --------------------------------------------------------------------------------------------
    def classify(self, images: Any, labels: Iterable[str] | str, **params: Any) -> list[dict[str, Any]]:
        """Zero-shot labels: params template, ensemble, question, top_k, multi_label, threshold, model."""
        labels = labels if isinstance(labels, str) else list(labels)  # a string: comma-separated, as --labels
        return self.call("classify", images, labels=labels, **params)

    def caption(self, images: Any, **params: Any) -> list[dict[str, Any]]:
        """Captions: params prompt, max_new_tokens, num_beams, sample, temperature, top_p, seed, model."""
        return self.call("caption", images, **params)

    def vqa(self, images: Any, questions: Iterable[str] | str, **params: Any) -> list[dict[str, Any]]:
        """One record per image and question; the generation params of caption."""
        return self.call("vqa", images, questions=_strings(questions), **params)

    def embed(self, images: Any = (), texts: Iterable[str] | str = (), **params: Any) -> list[dict[str, Any]]:
        """L2-normalised embeddings: the texts' records first, then the images'."""
        return self.call("embed", images, texts=_strings(texts), **params)

    def compare(
        self, images: Any, texts: Iterable[str] | str = (), against: Any = (), **params: Any
    ) -> list[dict[str, Any]]:
        """Rank ``images`` by cosine similarity to each text, or ``against`` to each image; param top_k."""
        return self.call("compare", images, texts=_strings(texts), against=_images(against), **params)

    def call(self, command: str, images: Any, **params: Any) -> list[dict[str, Any]]:
        """Any task by name, with the HTTP API's parameters."""
        from mmcli.server import service
        from mmcli.server.params import parse_call

        values = {k: v for k, v in params.items() if v is not None and v != []}
        values["images"] = _images(images)
        call = parse_call(command, values, self._spec, default_model=self.model)
        items = service.image_inputs(call.images, local=True)
        against = service.image_inputs(call.against, "against", local=True)
        if call.spec.is_local and not _is_alias(call.model):
            call.model = os.path.abspath(call.model)  # a server elsewhere: the same directory
        key = service.model_key(self.key, call)
        records: list[dict[str, Any]] = service.execute(self.runner, call, key, self.limits, items, against)[
            "records"
        ]
        return records

    def status(self) -> dict[str, Any]:
        """The engine's state: loaded models, their devices, memory and request counts."""
        status: dict[str, Any] = self.runner.status()
        return status

    def _spec(self, name: str, revision: str | None) -> Any:
        spec = getattr(self.runner, "spec", None)
        key = dataclasses.replace(self.key, name=name, revision=revision or self.key.revision)
        if spec is not None:
            return spec(key)
        if (name, key.revision) not in self._specs:
            from mmcli.modeling import registry

            self._specs[(name, key.revision)] = registry.resolve(name, key.revision)
        return self._specs[(name, key.revision)]

    # -- lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(socket: str | os.PathLike[str] | None) -> Any:
    """The server at ``socket`` (default: this user's), checked as the CLI checks it; MmcliError if none."""
    from pathlib import Path

    from mmcli.errors import MmcliError
    from mmcli.run.remote import paths
    from mmcli.run.remote.client import Remote
    from mmcli.version import __version__

    path = Path(socket) if socket is not None else paths.socket_path()
    reason = paths.untrusted(path)
    if reason:
        raise UsageError(f"not using the mmcli server at {path}: {reason}")
    try:
        remote = Remote.open(path)
    except OSError:
        raise MmcliError(
            f"no mmcli server answers at {path}",
            "start one with `mmcli serve`, or use Client(in_process=True)",
        ) from None
    if remote.version != __version__:
        remote.close()
        raise MmcliError(f"the mmcli server at {path} runs mmcli {remote.version}, this is {__version__}")
    return remote


def _is_alias(name: str) -> bool:
    from mmcli.modeling import registry

    return name in registry.aliases()


def _strings(value: Iterable[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _images(value: Any) -> list[Any]:
    """One image or several: a path, URL, bytes or PIL image alone is one."""
    if isinstance(value, (str, bytes, bytearray, os.PathLike)) or hasattr(value, "save"):
        return [value]
    return list(value)
