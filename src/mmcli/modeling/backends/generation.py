"""Answers and label scores of any image-text-to-text model, through its own ``generate``.

Captions: ``model.generate`` on the processor's inputs; the answer is what follows the prompt, decoded by
the processor as ``pipeline("image-text-to-text")`` decodes it. Where the output repeats the prompt token
for token (decoder-only models) those tokens are cut; otherwise (a model that rewrites its prompt, BLIP)
the decoded prompt is cut from the decoded text where it starts it, as the pipeline does.

Label scores: each label is the answer ``generate`` is made to give (a logits processor forces its tokens),
and its score is the mean log-probability the model gave those tokens, from the raw logits. So a label is
scored exactly where and how the model writes an answer: after whatever the processor puts at the end of
the prompt (PaliGemma's newline, image tokens, ...), with the model's own positions, caches and masks
(PaliGemma's prefix attention), in the decoder of encoder-decoder models (Florence-2: after its start and
forced BOS tokens). A label's tokens are those it takes after the end of the prompt: read from the
tokenizer's offsets where it has them, else from tokenizing the prompt's end with and without the label.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mmcli.errors import UsageError

CONTEXT_TOKENS = 16  # the end of the prompt a label is tokenized after


class ForceTokens(LogitsProcessor):
    """Make ``generate`` write ``rows[r]`` in row ``r`` (all rows as long as the longest)."""

    def __init__(self, rows: list[list[int]]):
        self.rows = torch.tensor(rows, dtype=torch.long)
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = int(input_ids.shape[1])
        step = int(input_ids.shape[1]) - self.start
        forced = self.rows[:, step].to(scores.device).unsqueeze(1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, forced, 0.0)  # type: ignore[return-value]


def forced_mean_logprob(
    model: Any, inputs: dict[str, Any], prefix: list[int], labels: list[list[int]]
) -> torch.Tensor:
    """(len(labels),) mean log-probability of each label's tokens, written after ``prefix`` (tokens the
    model's own generation starts with, unscored), one input row per label."""
    steps = len(prefix) + max(len(label) for label in labels)
    rows = [prefix + label + [label[-1]] * (steps - len(prefix) - len(label)) for label in labels]
    out = model.generate(
        **inputs,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        num_beams=1,
        logits_processor=LogitsProcessorList([ForceTokens(rows)]),
        output_logits=True,
        return_dict_in_generate=True,
    )
    if len(out.logits) < steps:
        raise UsageError("the model stopped before the end of a label (a label holds its end token?)")
    logits = torch.stack(out.logits[len(prefix) : steps], dim=1).float()
    targets = torch.tensor([row[len(prefix) :] for row in rows], device=logits.device)
    logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lengths = torch.tensor([len(label) for label in labels], device=logits.device)
    weights = (torch.arange(logp.shape[1], device=logits.device) < lengths.unsqueeze(1)).to(logp.dtype)
    return ((logp * weights).sum(1) / lengths).cpu()


def label_tokens(tokenizer: Any, context: str, label: str) -> list[int]:
    """The tokens ``label`` takes after ``context`` (the end of the prompt; "" at a decoder's start).

    A space separates them unless the context ends in whitespace. With a fast tokenizer the label's tokens
    are those whose character offsets end after the context; else the tokens of context + label past those
    of the context alone.
    """
    if not label.strip():
        raise UsageError("a label is empty")
    sep = "" if not context or context[-1].isspace() else " "
    text = context + sep + label
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        pairs = zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
        found = [int(token) for token, (_, end) in pairs if end > len(context)]
    else:
        whole = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        head = list(tokenizer(context, add_special_tokens=False)["input_ids"]) if context else []
        same = 0
        while same < min(len(whole), len(head)) and whole[same] == head[same]:
            same += 1
        found = whole[same:]
    if not found:
        raise UsageError(f"the label {label!r} takes no tokens with this model's tokenizer")
    return found


def prompt_context(tokenizer: Any, ids: torch.Tensor | None, mask: torch.Tensor | None) -> str:
    """The text of the last tokens of one prompt row (padding left out): what a label follows."""
    if ids is None:
        return ""
    row = ids.tolist() if mask is None else [t for t, m in zip(ids.tolist(), mask.tolist(), strict=True) if m]
    text: str = tokenizer.decode(row[-CONTEXT_TOKENS:], skip_special_tokens=False)
    return text


def decode_answers(
    processor: Any, tokenizer: Any, out: torch.Tensor, prompt: torch.Tensor | None
) -> list[str]:
    """What ``generate`` wrote after the prompt, decoded and stripped (see the module docstring)."""
    out = out.cpu()
    width = 0 if prompt is None else int(prompt.shape[1])
    if prompt is not None and out.shape[1] >= width and torch.equal(out[:, :width], prompt.cpu()):
        return [text.strip() for text in decode(processor, tokenizer, out[:, width:])]
    texts = decode(processor, tokenizer, out)
    if prompt is None:
        return [text.strip() for text in texts]
    answers = []
    for text, asked in zip(texts, decode(processor, tokenizer, prompt.cpu()), strict=True):
        where = text.find(asked) if asked else -1
        answers.append((text[where + len(asked) :] if 0 <= where <= 2 else text).strip())
    return answers


def decode(processor: Any, tokenizer: Any, ids: torch.Tensor) -> list[str]:
    """Token rows to text, special tokens left out, by the processor where it post-processes answers."""
    post = getattr(processor, "post_process_image_text_to_text", None)
    texts = post(ids, skip_special_tokens=True) if callable(post) else None
    if not isinstance(texts, list):
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [str(text) for text in texts]
