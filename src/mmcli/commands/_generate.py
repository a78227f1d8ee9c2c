"""Options shared by the commands that generate text (caption, vqa)."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from mmcli.errors import UsageError

GEN = "Generation"

MaxNewTokens = Annotated[
    int, typer.Option("--max-new-tokens", min=1, help="Longest answer, in tokens.", rich_help_panel=GEN)
]
NumBeams = Annotated[
    int, typer.Option("--num-beams", min=1, help="Beam search width (1: greedy).", rich_help_panel=GEN)
]
Sample = Annotated[
    bool, typer.Option("--sample", help="Sample instead of greedy decoding.", rich_help_panel=GEN)
]
Temperature = Annotated[
    float,
    typer.Option(
        "--temperature", min=0.0, help="Sampling temperature (with --sample: above 0).", rich_help_panel=GEN
    ),
]
TopP = Annotated[
    float,
    typer.Option(
        "--top-p",
        min=0.0,
        max=1.0,
        help="Nucleus sampling mass (with --sample: above 0).",
        rich_help_panel=GEN,
    ),
]
Seed = Annotated[
    int | None,
    typer.Option("--seed", help="Seed for --sample: the same seed gives the same text.", rich_help_panel=GEN),
]


def generate_options(
    max_new_tokens: int,
    num_beams: int,
    sample: bool,
    temperature: float,
    top_p: float,
    seed: int | None,
    raw_prompts: bool = False,
) -> object:
    from mmcli.modeling.tasks import GenerateOptions

    check_decoding(sample, temperature, top_p, seed)
    return GenerateOptions(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        raw_prompts=raw_prompts,
    )


def check_decoding(sample: bool, temperature: float, top_p: float, seed: int | None) -> None:
    """What the option ranges cannot say; found here, before any weights load."""
    if not math.isfinite(temperature):
        raise UsageError(f"--temperature {temperature} is not a finite number")
    if sample and temperature <= 0:
        raise UsageError(
            "--temperature must be above 0 with --sample; leave out --sample for greedy decoding"
        )
    if sample and top_p <= 0:
        raise UsageError("--top-p must be above 0 with --sample (1 keeps every token)")
    if seed is not None and not 0 <= seed < 2**64:
        raise UsageError(f"--seed {seed} is out of range: use a whole number from 0 to {2**64 - 1}")
