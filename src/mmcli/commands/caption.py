"""mmcli caption: one caption per image, batched; optionally a .txt sidecar beside each image."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Annotated, Any

import typer

from mmcli.commands._generate import MaxNewTokens, NumBeams, Sample, Seed, Temperature, TopP, generate_options
from mmcli.commands._options import Inputs, with_common_options
from mmcli.errors import UsageError
from mmcli.output import Record
from mmcli.pipeline import CommonOptions, Job, Outcome, Task, error_record

COLUMNS = ["input", "caption", "model", "prompt", "error"]
TABLE_COLUMNS = ["input", "caption"]


def sidecar_path(image: str, extension: str) -> str:
    """``photos/cat.jpg`` -> ``photos/cat.txt``: the convention of dataset-captioning tools."""
    return os.path.splitext(image)[0] + "." + extension.lstrip(".")


def write_atomically(path: str, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: never a half-written sidecar."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".mmcli-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@with_common_options
def caption(
    inputs: Inputs = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="Prompt (default: the model's caption prompt; BLIP-2: none)."),
    ] = None,
    max_new_tokens: MaxNewTokens = 30,
    num_beams: NumBeams = 1,
    sample: Sample = False,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    seed: Seed = None,
    sidecar: Annotated[
        str | None,
        typer.Option(
            "--sidecar", help="Also write each caption beside its image, e.g. txt: cat.jpg -> cat.txt."
        ),
    ] = None,
    *,
    common: CommonOptions,
) -> int:
    """Caption images with a generative model (BLIP-2, LLaVA, ...).

    Example: mmcli caption photos/ --model blip2-opt-2.7b --sidecar txt
    """
    if sidecar is not None and (not sidecar.strip(".") or "/" in sidecar):
        raise UsageError(f"--sidecar {sidecar!r} is not a file extension (say txt)")
    options: Any = generate_options(
        max_new_tokens, num_beams, sample, temperature, top_p, seed, raw_prompts=True
    )
    return Job(Caption(prompt, options, sidecar), common).execute(inputs)


class Caption(Task):
    name = "caption"
    columns = COLUMNS
    table_columns = TABLE_COLUMNS
    needs = frozenset({"generate"})

    def __init__(self, prompt: str | None, options: Any, sidecar: str | None) -> None:
        self.prompt = prompt
        self.options = options
        self.sidecar = sidecar
        self.shown_prompt = prompt

    def options_key(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "generate": dataclasses.asdict(self.options), "sidecar": self.sidecar}

    def prepare(self, backend: Any) -> None:
        if self.prompt is None:
            self.shown_prompt = backend.default_prompt("caption")

    def compute(self, backend: Any, batch: Any, n: int) -> list[str]:
        return list(backend.generate(batch, [self.prompt] * n, self.options))

    def records(self, done: list[Outcome]) -> list[list[Record]]:
        out: list[list[Record]] = []
        for o in done:
            if self.sidecar:
                try:
                    write_atomically(sidecar_path(o.item.input, self.sidecar), o.value)
                except OSError as exc:
                    out.append([error_record(o.item, f"cannot write the sidecar: {exc.strerror or exc}")])
                    continue
            out.append(
                [
                    {
                        "input": o.item.input,
                        "caption": o.value,
                        "model": self.model,
                        "prompt": self.shown_prompt,
                    }
                ]
            )
        return out
