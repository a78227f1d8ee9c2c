"""mmcli vqa: answer questions about each image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mmcli.commands._generate import MaxNewTokens, NumBeams, Sample, Seed, Temperature, TopP, generate_options
from mmcli.commands._options import Inputs, with_common_options
from mmcli.errors import UsageError
from mmcli.pipeline import CommonOptions, Job, error_record

COLUMNS = ["input", "question", "answer", "model", "error"]
TABLE_COLUMNS = ["input", "question", "answer"]


def parse_questions(questions: list[str] | None, questions_file: Path | None) -> list[str]:
    found = [q.strip() for q in questions or []]
    if questions_file is not None:
        try:
            text = questions_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--questions-file {questions_file}: {exc.strerror or exc}") from exc
        found += [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    found = [q for q in found if q]
    if not found:
        raise UsageError('no question: pass --question "What color is it?" or --questions-file FILE')
    return found


@with_common_options
def vqa(
    inputs: Inputs,
    question: Annotated[
        list[str] | None,
        typer.Option("--question", "-Q", help="A question; repeatable.", show_default=False),
    ] = None,
    questions_file: Annotated[
        Path | None, typer.Option("--questions-file", help="A file with one question per line.")
    ] = None,
    max_new_tokens: MaxNewTokens = 30,
    num_beams: NumBeams = 1,
    sample: Sample = False,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    seed: Seed = None,
    *,
    common: CommonOptions,
) -> int:
    """Visual question answering: one record per image and question.

    Example: mmcli vqa photo.jpg --question "How many people are there?" --model llava-1.5-7b
    """
    questions = parse_questions(question, questions_file)
    job = Job("vqa", common, {"generate"}, COLUMNS)
    if job.format == "table":
        job.columns = TABLE_COLUMNS
    backend = job.load()
    options: Any = generate_options(max_new_tokens, num_beams, sample, temperature, top_p, seed)
    model = job.spec.label

    def answer_all(batch: Any, n: int) -> list[list[str]]:
        per_question = [backend.generate(batch, [q] * n, options) for q in questions]
        return [list(answers) for answers in zip(*per_question, strict=True)]

    def body() -> None:
        for batch in job.forward(job.items(inputs), answer_all):
            for out in batch:
                if out.error is not None:
                    job.emit(error_record(out.item, out.error))
                    continue
                for q, a in zip(questions, out.value, strict=True):
                    job.emit({"input": out.item.input, "question": q, "answer": a, "model": model})
            job.writer.flush()

    return job.run(body)
