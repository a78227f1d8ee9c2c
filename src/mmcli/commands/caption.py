"""mmcli caption: one caption per image, batched; optionally a .txt sidecar beside each image."""

from __future__ import annotations

import os
import tempfile
from typing import Annotated, Any

import typer

from mmcli.commands._generate import MaxNewTokens, NumBeams, Sample, Seed, Temperature, TopP, generate_options
from mmcli.commands._options import Inputs, with_common_options
from mmcli.errors import UsageError
from mmcli.pipeline import CommonOptions, Job, error_record

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
    inputs: Inputs,
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
    job = Job("caption", common, {"generate"}, COLUMNS)
    if job.format == "table":
        job.columns = TABLE_COLUMNS
    backend = job.load()
    options: Any = generate_options(
        max_new_tokens, num_beams, sample, temperature, top_p, seed, raw_prompts=True
    )
    shown_prompt = prompt if prompt is not None else backend.default_prompt("caption")
    model = job.spec.label

    def body() -> None:
        for batch in job.forward(job.items(inputs), lambda b, n: backend.generate(b, [prompt] * n, options)):
            for out in batch:
                if out.error is not None:
                    job.emit(error_record(out.item, out.error))
                    continue
                if sidecar:
                    try:
                        write_atomically(sidecar_path(out.item.input, sidecar), out.value)
                    except OSError as exc:
                        job.emit(error_record(out.item, f"cannot write the sidecar: {exc.strerror or exc}"))
                        continue
                job.emit(
                    {"input": out.item.input, "caption": out.value, "model": model, "prompt": shown_prompt}
                )
            job.writer.flush()

    return job.run(body)
