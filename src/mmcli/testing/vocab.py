"""Tokenizers built offline from hand-made vocabularies: one per tokenizer family the tiny checkpoints use.

Each has one token per character (or per byte) plus the special tokens its model family needs, so nothing is
downloaded, any text can be written, and prompts stay short enough for tiny position tables. A recipe
(``mmcli.testing.recipe``) names one of these as its ``tokenizer``.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

CHARS = string.ascii_lowercase + string.digits + ".,'!?-:;()/&"  # CLIP's and BERT's (lowercased) text
LETTERS = string.ascii_letters + string.digits + ".,:;?!'()-"  # what generative models may write
IMAGE_TOKEN = "<image>"


def _add_special(tok: Any, tokens: Iterable[str]) -> Any:
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(t, normalized=False, special=True) for t in tokens], special_tokens=True)
    return tok


def clip_tokenizer(words: Sequence[str] = ()) -> Any:
    """A CLIP BPE tokenizer: one token per character (and its end-of-word form), and one token for each
    of ``words`` (through the merges that build it), so prompts made of them are as short as with
    CLIP's real 49k-token vocabulary."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.lower() for w in words):
        if len(word) < 2 or not set(word) <= set(CHARS):
            continue
        left = word[0]
        for i, c in enumerate(word[1:], start=1):
            right = c + ("</w>" if i == len(word) - 1 else "")
            merge = (left, right)
            left += right
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(left, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]  # tuples, as tokenizers wants


SIGLIP_WORDS = ["<pad>", "<unk>", "</s>", ".", "a", "an", "of", "photo", "this", "is", "the"]
SIGLIP_WORDS += ["cat", "dog", "bird", "car", "tree", "red", "green", "blue", "yellow", "purple", "orange"]
SIGLIP_WORDS += ["circle", "square", "triangle", "star"]


def siglip_tokenizer() -> Any:
    """A word-level tokenizer over ``SIGLIP_WORDS`` that appends ``</s>``; texts are padded to 64."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SIGLIP_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", model_max_length=64
    )


def opt_tokenizer() -> Any:
    """OPT's byte-level BPE (GPT2Tokenizer): one token per byte, ``</s>`` first as BOS and EOS."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2Tokenizer

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tok = GPT2Tokenizer(
        vocab=vocab,
        merges=[],
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )
    return _add_special(tok, [IMAGE_TOKEN])


def t5_tokenizer() -> Any:
    """A T5 unigram tokenizer over single characters (``</s>`` appended, ``<pad>`` = 0 starts decoding)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in LETTERS] + [("▁" + c, -2.5) for c in string.ascii_lowercase]
    return _add_special(T5Tokenizer(vocab=pieces, extra_ids=0), [IMAGE_TOKEN])


def llama_tokenizer() -> Any:
    """A Llama BPE tokenizer (byte fallback, ``▁`` prepended to the first word only) plus ``<image>``."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in ["▁", *LETTERS]:
        vocab[char] = len(vocab)
    tok = LlamaTokenizer(vocab=vocab, merges=[], pad_token="<pad>", legacy=False, add_bos_token=True)
    return _add_special(tok, [IMAGE_TOKEN])


def byte_tokenizer(
    special: list[str], eos: str, named: dict[str, str] | None = None, bos: str | None = None
) -> Any:
    """Qwen2's byte-level BPE with one token per byte (no merges), ``<|endoftext|>`` and ``special``.

    ``named``: tokens the processor reads as tokenizer attributes (Gemma 3's ``boi_token``, ...).
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    for token in special:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=[], pad_token="<|endoftext|>", extra_special_tokens=named or {}, bos_token=bos
    )
    _add_special(tok, special)
    tok.eos_token = eos
    return tok


def byte(special: list[str], eos: str, bos: str | None = None, **named: str) -> Callable[[], Any]:
    """A recipe's ``tokenizer``: ``byte_tokenizer`` with ``special`` tokens; ``named`` become attributes."""
    return partial(byte_tokenizer, special, eos, named or None, bos)


def bert_tokenizer(special: tuple[str, ...] = (), bos: str | None = None) -> Any:
    """A WordPiece (BERT) tokenizer with one token per character and its ``##`` continuation."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *special]
    tokens += list(CHARS) + ["##" + c for c in CHARS]
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True, bos_token=bos)


def ids(tok: Any, token: str) -> int:
    """``token``'s id in ``tok``; a KeyError when the tokenizer does not have it."""
    found: int = tok.convert_tokens_to_ids(token)
    if found is None or (found == tok.unk_token_id and token != tok.unk_token):
        raise KeyError(f"{token!r} is not in the tokenizer")
    return found
