"""A Task as JSON, to travel from the CLI to the server: its class (a Task subclass in mmcli.commands) and
its plain fields. What only the client does (a caption's sidecar files) stays out (``Task.client_only``);
what ``prepare`` computes on the model side (label embeddings) is not sent, it is None before ``prepare``.

No pickle: the server rebuilds only Task classes of mmcli's own commands, from JSON values.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

from mmcli.errors import UsageError
from mmcli.modeling.tasks import GenerateOptions
from mmcli.modeling.views import View
from mmcli.run.task import Task

PACKAGE = "mmcli.commands."
DATACLASSES: dict[str, type] = {"GenerateOptions": GenerateOptions, "View": View}


def encode(task: Task) -> dict[str, Any]:
    cls = type(task)
    fields = {
        name: _value(value)
        for name, value in vars(task).items()
        if name not in cls.client_only and not name.startswith("_")
    }
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}


def key(wire: dict[str, Any]) -> str:
    """One text per distinct task: prepared tasks (label embeddings) are kept by it."""
    return json.dumps(wire, sort_keys=True)


def decode(wire: Any) -> Task:
    if not isinstance(wire, dict) or not isinstance(wire.get("class"), str):
        raise UsageError("the request names no task")
    module, _, name = wire["class"].partition(":")
    if not module.startswith(PACKAGE) or not name.isidentifier():
        raise UsageError(f"{wire['class']!r} is not a task of mmcli's")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UsageError(f"{wire['class']!r} is not a task of mmcli's")
    task = cls.__new__(cls)
    fields = wire.get("fields")
    if not isinstance(fields, dict):
        raise UsageError("the task's fields are not a JSON object")
    for name, value in fields.items():
        setattr(task, name, _restore(value))
    task.restored()
    return task


def _value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"$dataclass": type(value).__name__, "fields": dataclasses.asdict(value)}
    if isinstance(value, frozenset | set):
        return {"$set": sorted(value)}
    if isinstance(value, tuple):
        return [_value(v) for v in value]
    if isinstance(value, list):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"a task field of type {type(value).__name__} cannot travel to the server")


def _restore(value: Any) -> Any:
    if isinstance(value, list):
        return [_restore(v) for v in value]
    if isinstance(value, dict):
        if "$set" in value:
            return frozenset(value["$set"])
        if "$dataclass" in value:
            cls = DATACLASSES.get(str(value["$dataclass"]))
            if cls is None:
                raise UsageError(f"unknown option set {value['$dataclass']!r}")
            return cls(**value.get("fields", {}))
        return {k: _restore(v) for k, v in value.items()}
    return value
