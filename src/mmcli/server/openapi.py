"""The HTTP API's routes and their OpenAPI 3.1 description, in one place: ``http.py`` routes by ``ROUTES``
and serves ``document()`` at ``/openapi.json``, and a test checks that every route is described.
"""

from __future__ import annotations

from typing import Any

from mmcli.version import __version__

# path -> (method, handler name in http.App, summary)
ROUTES: dict[str, tuple[str, str, str]] = {
    "/health": ("GET", "health", "Liveness: always 200, no token needed."),
    "/openapi.json": ("GET", "openapi", "This description."),
    "/v1/models": ("GET", "models", "The loaded models and the server's state."),
    "/v1/classify": ("POST", "classify", "Zero-shot labels for each image."),
    "/v1/caption": ("POST", "caption", "A caption for each image (generative models)."),
    "/v1/vqa": ("POST", "vqa", "Answers to questions about each image (generative models)."),
    "/v1/embed": ("POST", "embed", "L2-normalised image and text embeddings."),
    "/v1/compare": ("POST", "compare", "Images ranked by cosine similarity to texts or to other images."),
    "/v1/embeddings": ("POST", "embeddings", "OpenAI-compatible embeddings of texts and images."),
    "/v1/chat/completions": ("POST", "chat", "OpenAI-compatible chat: one question about one image."),
}

S = "string"
_str = {"type": S}
_int = {"type": "integer"}
_num = {"type": "number"}
_bool = {"type": "boolean"}
_strs = {"type": "array", "items": _str}
_IMAGE = {
    "description": "An http(s) URL, a data:image/...;base64 URL, or an uploaded file's bytes.",
    "oneOf": [
        {"type": S, "description": "http(s) URL or data: URL"},
        {
            "type": "object",
            "properties": {"name": _str, "base64": _str},
            "required": ["base64"],
            "additionalProperties": False,
        },
        {"type": "object", "properties": {"name": _str, "url": _str}, "required": ["url"]},
    ],
}
_GENERATION = {
    "max_new_tokens": {**_int, "minimum": 1, "default": 30},
    "num_beams": {**_int, "minimum": 1, "default": 1},
    "sample": {**_bool, "default": False},
    "temperature": {**_num, "minimum": 0, "default": 1.0, "description": "with sample: above 0"},
    "top_p": {**_num, "minimum": 0, "maximum": 1, "default": 1.0},
    "seed": {**_int, "minimum": 0, "maximum": 2**64 - 1},
}
_COMMON = {
    "model": {**_str, "description": "An alias, hub id or server-side directory (default: the task's)."},
    "revision": _str,
    "images": {"type": "array", "items": _IMAGE},
    "max_pixels": {**_int, "minimum": 1, "description": "At most the server's own limit."},
}
_TASKS: dict[str, dict[str, Any]] = {
    "classify": {
        "labels": {"description": "A list, or one comma-separated string.", "oneOf": [_strs, _str]},
        "template": {**_str, "description": 'Contrastive models: one "{}" where the label goes.'},
        "ensemble": {**_str, "description": "A template set from configs/templates.toml (imagenet80)."},
        "question": {**_str, "description": "Generative models: the question each label answers."},
        "top_k": {**_int, "minimum": 1},
        "multi_label": _bool,
        "threshold": {**_num, "minimum": 0, "maximum": 1, "default": 0.5},
    },
    "caption": {"prompt": _str, **_GENERATION},
    "vqa": {"questions": _strs, "question": {"oneOf": [_str, _strs]}, **_GENERATION},
    "embed": {"texts": _strs},
    "compare": {
        "texts": _strs,
        "against": {"type": "array", "items": _IMAGE},
        "top_k": {**_int, "minimum": 1},
    },
}
_REQUIRED = {
    "classify": ["images", "labels"],
    "caption": ["images"],
    "vqa": ["images"],
    "compare": ["images"],
}
_RECORDS = {
    "classify": ["input", "label", "score", "scores", "labels", "question", "model"],
    "caption": ["input", "caption", "model", "prompt"],
    "vqa": ["input", "question", "answer", "model"],
    "embed": ["input | text", "embedding", "model"],
    "compare": ["query", "target", "score", "model"],
}
_ERROR = {
    "description": "The request was refused: a one-line reason.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"message": _str, "type": _str, "hint": _str},
                        "required": ["message", "type"],
                    }
                },
            }
        }
    },
}
ERRORS = {
    "400": "a malformed body, a wrong type, an unknown parameter, a model that cannot do the task",
    "401": "a token is set and the request lacks it (Authorization: Bearer TOKEN)",
    "404": "an unknown model, or no such path",
    "405": "the wrong method for the path",
    "413": "the body is over the server's limit",
    "415": "a body that is neither JSON nor a form",
    "422": "the model could not be loaded",
    "500": "the server failed (a bug): the request is lost, the server stays up",
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _task(name: str) -> dict[str, Any]:
    body = {
        "type": "object",
        "properties": {**_COMMON, **_TASKS[name]},
        "required": _REQUIRED.get(name, []),
        "additionalProperties": False,
    }
    form = {
        "type": "object",
        "description": "Files as `image` parts (compare: also `against`); other fields as strings, lists as "
        "repeated fields (labels: also comma-separated).",
        "properties": {"image": {"type": "array", "items": {"type": S, "format": "binary"}}},
    }
    record = {
        "type": "object",
        "description": f"Fields: {', '.join(_RECORDS[name])}; a failed input: {{input, error}}; a decoder's "
        "note about a file: warning.",
    }
    result = {
        "type": "object",
        "properties": {
            "model": _str,
            "device": _str,
            "dtype": _str,
            "records": {"type": "array", "items": record},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body}, "multipart/form-data": {"schema": form}},
        },
        "responses": {"200": _json(result, "The records the CLI prints, in input order.")},
    }


def _openai(name: str) -> dict[str, Any]:
    if name == "embeddings":
        body = {
            "type": "object",
            "properties": {
                "model": _str,
                "input": {"description": "A string, a list of strings, or text/image_url parts."},
                "encoding_format": {"enum": ["float", "base64"]},
                "user": _str,
            },
            "required": ["input"],
        }
        result = {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array"}}}
    else:
        body = {
            "type": "object",
            "description": "The last user message: its text is the question, its one image_url the image.",
            "properties": {
                "model": _str,
                "messages": {"type": "array"},
                "max_tokens": _int,
                "max_completion_tokens": _int,
                "temperature": {**_num, "description": "0 or absent: greedy; above 0: sampling"},
                "top_p": _num,
                "seed": _int,
                "stream": {"const": False},
                "n": {"const": 1},
            },
            "required": ["messages"],
        }
        result = {"type": "object", "properties": {"object": {"const": "chat.completion"}, "choices": {}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": _json(result)},
    }


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, (method, handler, summary) in ROUTES.items():
        if handler in _TASKS:
            operation = _task(handler)
        elif handler in ("embeddings", "chat"):
            operation = _openai(handler)
        else:
            operation = {"responses": {"200": _json({"type": "object"})}}
        operation["summary"] = summary
        operation["operationId"] = handler
        operation["responses"].update({code: {**_ERROR, "description": why} for code, why in ERRORS.items()})
        if path != "/health":
            operation["security"] = [{"bearer": []}]
        paths[path] = {method.lower(): operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mmcli serve", "version": __version__},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
