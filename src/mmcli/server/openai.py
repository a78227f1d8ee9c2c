"""OpenAI-compatible bodies <-> mmcli's own calls: ``/v1/embeddings`` is an embed, ``/v1/chat/completions``
a vqa of the last user message. Pure translation (no I/O), so the HTTP face stays a thin router.

What is not supported says so (a 400), never silently does something else: token arrays, ``dimensions``,
``n`` > 1, streaming, chats without exactly one image. Earlier messages and system prompts are not sent to
the model (vqa answers one question about one image); token counts in ``usage`` are 0 (not counted).
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

from mmcli.errors import UsageError

EMBEDDINGS_KEYS = {"model", "input", "encoding_format", "dimensions", "user"}
CHAT_KEYS = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stream",
    "n",
    "user",
}
USAGE = {"prompt_tokens": 0, "total_tokens": 0}


def _known(body: dict[str, Any], keys: set[str], endpoint: str) -> None:
    unknown = sorted(set(body) - keys)
    if unknown:
        raise UsageError(f"unknown parameter {unknown[0]!r} for {endpoint}; known: {', '.join(sorted(keys))}")


# -- /v1/embeddings -------------------------------------------------------------------------------------------
def embeddings_values(body: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The embed call's values, and where each input's vector will be: ("text", i) or ("image", i)."""
    _known(body, EMBEDDINGS_KEYS, "/v1/embeddings")
    if body.get("dimensions") is not None:
        raise UsageError("dimensions is not supported: the model's embeddings have one size")
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise UsageError("encoding_format must be float or base64")
    given = body.get("input")
    if isinstance(given, (str, dict)):
        given = [given]
    if not isinstance(given, list) or not given:
        raise UsageError("input is required: a string, a list of strings, or image_url parts")
    texts: list[str] = []
    images: list[Any] = []
    order: list[tuple[str, int]] = []
    for i, part in enumerate(given):
        kind, value = _embedding_input(part, i)
        if kind == "text":
            order.append(("text", len(texts)))
            texts.append(value)
        else:
            order.append(("image", len(images)))
            images.append(value)
    values: dict[str, Any] = {"texts": texts, "images": images}
    if body.get("model") is not None:
        values["model"] = body["model"]
    return values, order


def _embedding_input(part: Any, i: int) -> tuple[str, str]:
    if isinstance(part, str):
        return ("image", part) if part.startswith("data:image/") else ("text", part)
    if isinstance(part, dict):
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            return "text", part["text"]
        if part.get("type") == "image_url":
            return "image", _image_url(part, f"input[{i}]")
    if isinstance(part, (int, list)):
        raise UsageError("token arrays are not supported: send the text itself")
    raise UsageError(
        f'input[{i}]: a string, {{"type": "text", "text"}} or {{"type": "image_url", "image_url"}}'
    )


def _image_url(part: dict[str, Any], where: str) -> str:
    found = part.get("image_url")
    url = found.get("url") if isinstance(found, dict) else found
    if not isinstance(url, str) or not url:
        raise UsageError(f'{where}: image_url must be {{"url": "https://... or data:image/...;base64,..."}}')
    return url


def embeddings_response(
    result: dict[str, Any], order: list[tuple[str, int]], encoding: str = "float"
) -> dict[str, Any]:
    """OpenAI's list of embeddings, in input order. An image that failed fails the request (OpenAI's
    shape has no per-input error)."""
    import numpy as np

    records = result["records"]
    texts = [r for r in records if "text" in r]
    images = [r for r in records if "text" not in r]
    data = []
    for index, (kind, j) in enumerate(order):
        record = texts[j] if kind == "text" else images[j]
        if "error" in record:
            raise UsageError(f"input[{index}]: {record['error']}")
        vector: Any = record["embedding"]
        if encoding == "base64":
            vector = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": vector})
    return {"object": "list", "data": data, "model": result["model"], "usage": dict(USAGE)}


# -- /v1/chat/completions ---------------------------------------------------------------------------------------
def chat_values(body: dict[str, Any]) -> dict[str, Any]:
    """The vqa call's values: the last user message's text is the question, its one image the image."""
    _known(body, CHAT_KEYS, "/v1/chat/completions")
    if body.get("stream"):
        raise UsageError("streaming is not supported: leave out stream (or set it to false)")
    if body.get("n", 1) != 1:
        raise UsageError("n must be 1: one answer per request")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UsageError("messages is required: a list of {role, content}")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise UsageError("messages holds no user message")
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise UsageError("the user message's content must be a string or a list of parts")
    texts, images = [], []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image_url(part, f"content[{i}]"))
        else:
            raise UsageError(f'content[{i}]: a part is {{"type": "text", "text"}} or {{"type": "image_url"}}')
    if not images:
        raise UsageError(
            "the last user message has no image: add an image_url part (mmcli answers about images)"
        )
    if len(images) > 1:
        raise UsageError(f"the last user message has {len(images)} images: send one image per request")
    question = "\n".join(texts).strip()
    if not question:
        raise UsageError("the last user message has no text: ask a question about the image")
    values: dict[str, Any] = {"questions": [question], "images": images}
    for ours, theirs in (("model", "model"), ("top_p", "top_p"), ("seed", "seed")):
        if body.get(theirs) is not None:
            values[ours] = body[theirs]
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        values["max_new_tokens"] = tokens
    temperature = body.get("temperature")
    if temperature is not None:
        values["temperature"] = temperature
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0:
            values["sample"] = True  # 0 (or none): greedy, the same answer every time
    return values


def chat_response(result: dict[str, Any]) -> dict[str, Any]:
    record = result["records"][0]
    if "error" in record:
        raise UsageError(f"the image: {record['error']}")
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": record["answer"]},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
