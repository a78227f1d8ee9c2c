"""Options shared by the commands that generate text (caption, vqa)."""

from __future__ import annotations

from typing import Annotated

import typer

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
    float, typer.Option("--temperature", min=0.0, help="Sampling temperature.", rich_help_panel=GEN)
]
TopP = Annotated[
    float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.", rich_help_panel=GEN)
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
    from mmcli.backends.base import GenerateOptions

    return GenerateOptions(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        raw_prompts=raw_prompts,
    )
