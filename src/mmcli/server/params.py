"""Request parameters (an HTTP body, a form, ``Client`` keyword arguments) -> a checked ``Call``.

A request is checked exactly as the CLI checks its options: the same validators (``parse_labels``,
``prompt_templates``, ``generate_options``, ``check_question_template``, ...) raise the same errors, with
``--option`` turned into the parameter's name. Everything that can be checked before a model loads is
checked here, so a bad request costs no weights and no downloads. Imports nothing heavy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmcli.errors import UsageError

if TYPE_CHECKING:
    from mmcli.modeling.registry import ModelSpec
    from mmcli.run.task import Task

COMMANDS = ("classify", "caption", "vqa", "embed", "compare")


@dataclass(frozen=True)
class Param:
    """One parameter's type (str, int, float, bool, strings: a list of text) and range."""

    kind: str
    low: float | None = None
    high: float | None = None


GENERATION = {
    "max_new_tokens": Param("int", 1),
    "num_beams": Param("int", 1),
    "sample": Param("bool"),
    "temperature": Param("float", 0.0),
    "top_p": Param("float", 0.0, 1.0),
    "seed": Param("int"),
}
COMMON = {"model": Param("str"), "revision": Param("str"), "max_pixels": Param("int", 1)}
PARAMS: dict[str, dict[str, Param]] = {
    "classify": {
        "labels": Param("labels"),
        "template": Param("str"),
        "ensemble": Param("str"),
        "question": Param("str"),
        "top_k": Param("int", 1),
        "multi_label": Param("bool"),
        "threshold": Param("float", 0.0, 1.0),
    },
    "caption": {"prompt": Param("str"), **GENERATION},
    "vqa": {"questions": Param("strings"), "question": Param("strings"), **GENERATION},
    "embed": {"texts": Param("strings")},
    "compare": {"texts": Param("strings"), "top_k": Param("int", 1)},
}
IMAGE_LISTS = {name: ("images",) for name in COMMANDS} | {"compare": ("images", "against")}


@dataclass
class Call:
    """One checked request: the model asked for, the task, and the images still as the caller gave them.

    compare is two things: ``task`` embeds its images (and texts), ``against``/``top_k`` say what to rank.
    """

    command: str
    model: str
    revision: str | None
    task: Task
    spec: ModelSpec
    images: list[Any] = field(default_factory=list)
    against: list[Any] = field(default_factory=list)
    top_k: int | None = None
    max_pixels: int | None = None


def parse_call(
    command: str,
    values: Mapping[str, Any],
    resolve: Callable[[str, str | None], ModelSpec],
    default_model: str | None = None,
    form: bool = False,
) -> Call:
    """Check ``values`` (JSON values, or with ``form`` lists of form strings) and build the Call.

    ``resolve(name, revision)`` turns the model name into its spec (the engine's cached lookup); it is
    called only after every parameter that needs no model has been checked.
    """
    from mmcli.modeling import registry

    if command not in PARAMS:
        raise UsageError(f"unknown task {command!r}; known: {', '.join(COMMANDS)}")
    known = PARAMS[command] | COMMON
    images = {name: _image_list(name, values.get(name, [])) for name in IMAGE_LISTS[command]}
    given: dict[str, Any] = {}
    for name, value in values.items():
        if name in images:
            continue
        if name not in known:
            raise UsageError(f"unknown parameter {name!r} for {command}; known: {', '.join(sorted(known))}")
        if value is not None:  # null: as if not given (the default)
            try:
                given[name] = coerce(name, value, known[name], form)
            except UsageError as exc:
                raise as_parameters(exc) from None
    model = given.pop("model", None) or default_model or registry.default_model(command)
    revision = given.pop("revision", None)
    max_pixels = given.pop("max_pixels", None)
    build = _BUILDERS[command]
    try:
        prepared = build(given, images, None)  # every check that needs no model
        spec = resolve(model, revision)
        task, top_k = build(given, images, spec) if prepared is None else prepared
        if task.needs:
            registry.require(spec, set(task.needs), command)
    except UsageError as exc:
        raise as_parameters(exc) from None
    task.model = spec.label
    return Call(
        command, model, revision, task, spec, images["images"], images.get("against", []), top_k, max_pixels
    )


def as_parameters(exc: UsageError) -> UsageError:
    """The CLI validators' message with ``--max-new-tokens`` spelled as the parameter ``max_new_tokens``."""
    message = re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)", lambda m: m[1].replace("-", "_"), exc.message)
    return type(exc)(message, exc.hint)


def coerce(name: str, value: Any, param: Param, form: bool = False) -> Any:
    """A JSON value (or a form field's strings) as the parameter's type, in range; UsageError otherwise."""
    if form:
        value = _from_form(name, value, param)
    if value is None:
        return None
    kind = param.kind
    if kind == "labels":
        return _labels(value, form)
    if kind == "strings":
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{name} must be a list of strings")
        return value
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
    }[kind]
    if not ok:
        what = {"str": "a string", "bool": "true or false", "int": "a whole number", "float": "a number"}
        raise UsageError(f"{name} must be {what[kind]}, not {value!r:.60}")
    if kind == "float":
        value = float(value)
        if not math.isfinite(value):
            raise UsageError(f"{name} {value} is not a finite number")
    if param.low is not None and value < param.low:
        raise UsageError(f"{name} {value} is out of range: it must be at least {param.low:g}")
    if param.high is not None and value > param.high:
        raise UsageError(f"{name} {value} is out of range: it must be at most {param.high:g}")
    return value


def _from_form(name: str, values: Any, param: Param) -> Any:
    """Form fields are strings, possibly repeated: a list of them becomes the parameter's type."""
    values = values if isinstance(values, list) else [values]
    if param.kind in ("strings", "labels"):
        return values
    if len(values) != 1:
        raise UsageError(f"{name} is given {len(values)} times; give it once")
    text = str(values[0]).strip()
    if param.kind == "str":
        return values[0]
    if param.kind == "bool":
        if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise UsageError(f"{name} must be true or false, not {text!r:.60}")
        return text.lower() in ("true", "1", "yes", "on")
    try:
        return int(text) if param.kind == "int" else float(text)
    except ValueError:
        what = "a whole number" if param.kind == "int" else "a number"
        raise UsageError(f"{name} must be {what}, not {text!r:.60}") from None


def _labels(value: Any, form: bool) -> list[str]:
    """A string is split at commas (the CLI's --labels, repeatable in a form); a JSON list is taken as it
    is, so a label may hold a comma."""
    from mmcli.commands.classify import parse_labels, refuse_duplicates

    if isinstance(value, str):
        value = [value]
        form = True
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError("labels must be a list of strings or one comma-separated string")
    if form:
        if not any(part.strip() for chunk in value for part in chunk.split(",")):
            raise UsageError("labels holds no label")
        return parse_labels(value, None)
    labels = [label.strip() for label in value]
    if not all(labels):
        raise UsageError("labels holds an empty label")
    refuse_duplicates(labels, "label")
    return labels


def _image_list(name: str, value: Any) -> list[Any]:
    if isinstance(value, (str, dict, bytes, tuple)):
        return [value]
    if not isinstance(value, list):
        raise UsageError(f"{name} must be a list of images")
    return value


# -- one builder per command: (values, images, spec) -> (task, top_k). With spec None it makes only the
# checks that need no model and returns None, or its result when the model does not change the task. ----


def _classify(given: dict[str, Any], images: dict[str, list[Any]], spec: ModelSpec | None) -> Any:
    from mmcli.commands.classify import check_prompt_options, classify_task

    _need_images(images)
    labels = given.get("labels")
    if not labels:
        raise UsageError("labels is required: a list of labels, or one comma-separated string")
    template, ensemble, question = given.get("template"), given.get("ensemble"), given.get("question")
    check_prompt_options(template, ensemble, question)
    if spec is None:
        return None
    task = classify_task(
        spec,
        labels,
        template,
        ensemble,
        question,
        given.get("top_k"),
        bool(given.get("multi_label", False)),
        given.get("threshold", 0.5),
    )
    return task, None


def _generation(given: dict[str, Any], raw_prompts: bool) -> Any:
    from mmcli.commands._generate import generate_options

    return generate_options(
        given.get("max_new_tokens", 30),
        given.get("num_beams", 1),
        bool(given.get("sample", False)),
        given.get("temperature", 1.0),
        given.get("top_p", 1.0),
        given.get("seed"),
        raw_prompts=raw_prompts,
    )


def _caption(given: dict[str, Any], images: dict[str, list[Any]], spec: ModelSpec | None) -> Any:
    from mmcli.commands.caption import Caption

    _need_images(images)
    options = _generation(given, raw_prompts=True)
    return (Caption(given.get("prompt"), options, None), None)


def _vqa(given: dict[str, Any], images: dict[str, list[Any]], spec: ModelSpec | None) -> Any:
    from mmcli.commands.classify import refuse_duplicates
    from mmcli.commands.vqa import Vqa
    from mmcli.modeling import tasks

    _need_images(images)
    questions = [q.strip() for q in (given.get("questions") or []) + (given.get("question") or [])]
    if not questions:
        raise UsageError('questions is required: ["What color is it?", ...] (or question: "...")')
    if not all(questions):
        raise UsageError("questions holds an empty question")
    refuse_duplicates(questions, "question")
    options = _generation(given, raw_prompts=False)
    if spec is None:
        return None
    tasks.check_question_template(spec)
    return Vqa(questions, options), None


def _texts(given: dict[str, Any]) -> list[str]:
    texts = list(given.get("texts") or [])
    if any(not t.strip() for t in texts):
        raise UsageError("texts holds an empty text: give the text to embed")
    return texts


def _embed(given: dict[str, Any], images: dict[str, list[Any]], spec: ModelSpec | None) -> Any:
    from mmcli.commands.embed import Embed

    texts = _texts(given)
    if not texts and not images["images"]:
        raise UsageError("nothing to embed: give images and/or texts")
    return Embed(texts, bool(images["images"])), None


def _compare(given: dict[str, Any], images: dict[str, list[Any]], spec: ModelSpec | None) -> Any:
    from mmcli.commands.embed import Embed

    _need_images(images)
    texts = _texts(given)
    if bool(texts) == bool(images["against"]):
        raise UsageError("give either texts (search the images by text) or against (images to rank)")
    return Embed(texts, True), given.get("top_k")


def _need_images(images: dict[str, list[Any]]) -> None:
    if not images["images"]:
        raise UsageError("images is required: a list of images (URLs, data: URLs or {name, base64})")


_BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, list[Any]], ModelSpec | None], Any]] = {
    "classify": _classify,
    "caption": _caption,
    "vqa": _vqa,
    "embed": _embed,
    "compare": _compare,
}
