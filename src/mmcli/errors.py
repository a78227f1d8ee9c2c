"""MmcliError and friends, and the table that turns third-party errors into one-line messages.

Library code raises these; only ``mmcli.cli.main`` turns them into a message and an exit status.
"""

from __future__ import annotations

import re

# Exit statuses, documented in the README and tested in a subprocess.
EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class MmcliError(Exception):
    """An error with a message meant for the user. ``exit_code`` is what the process exits with."""

    exit_code = EXIT_FATAL

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(MmcliError):
    exit_code = EXIT_USAGE


class UnknownModelError(UsageError):
    pass


class CapabilityError(UsageError):
    pass


class DeviceError(MmcliError):
    pass


class ModelLoadError(MmcliError):
    pass


class InputError(Exception):
    """One input failed (unreadable, not an image, too big...). Becomes an error record, not a crash."""


def explain_load_error(exc: BaseException, name: str) -> MmcliError:
    """Map an exception raised while loading ``name`` to one actionable line."""
    cls = type(exc).__name__
    text = str(exc)
    if isinstance(exc, MmcliError):
        return exc
    if cls == "GatedRepoError":
        return ModelLoadError(
            f"{name} is a gated model: you must accept its licence on huggingface.co",
            "log in with `hf auth login` (or set HF_TOKEN) after accepting the terms",
        )
    if cls == "RepositoryNotFoundError":
        return ModelLoadError(
            f"no model named {name!r} on the Hugging Face hub (or it is private)",
            "check the spelling; `mmcli models` lists the aliases; a local directory works too",
        )
    if cls == "RevisionNotFoundError":
        return ModelLoadError(f"{name}: the requested revision does not exist")
    if cls in ("OfflineModeIsEnabled", "LocalEntryNotFoundError") or (
        "offline" in text.lower() and ("cache" in text.lower() or "hub" in text.lower())
    ):
        return ModelLoadError(
            f"{name} is not in the local cache and the hub cannot be reached (offline)",
            "download it once with network access, or pass a local directory as --model",
        )
    if "safetensors" in text.lower() and ("pickle" in text.lower() or ".bin" in text):
        return ModelLoadError(
            f"{name} has no safetensors weights; mmcli does not load pickle (.bin) files by default",
            "pass --allow-pickle only if you trust the checkpoint's author",
        )
    if "trust_remote_code" in text:
        return ModelLoadError(
            f"{name} needs code from its repository to run",
            "pass --trust-remote-code only if you trust the checkpoint's author",
        )
    if cls in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "HfHubHTTPError"):
        return ModelLoadError(
            f"could not reach the Hugging Face hub for {name}: {first_sentence(text) or cls}",
            "check the network, or use --offline with a cached model",
        )
    return ModelLoadError(f"could not load {name}: {first_sentence(text) or cls}")


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])|\n\s*\n")


def first_sentence(text: str) -> str:
    """The first sentence of ``text``, whole even where it runs over line breaks, on one line.

    A sentence ends at ``.``, ``!`` or ``?`` followed by space and a capital (so ``e.g. a`` and
    ``config.json`` do not end one), or at a blank line; text without an end is kept whole.
    """
    stripped = text.strip()
    match = SENTENCE_END.search(stripped)
    sentence = stripped[: match.start()] if match else stripped
    return " ".join(sentence.split())
