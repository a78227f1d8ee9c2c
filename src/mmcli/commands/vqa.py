"""mmcli vqa: answer questions about each image."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from mmcli.commands._generate import MaxNewTokens, NumBeams, Sample, Seed, Temperature, TopP, generate_options
from mmcli.commands._options import Inputs, with_common_options
from mmcli.commands.classify import FULL_LINE_COMMENT, read_list_file, refuse_duplicates
from mmcli.errors import UsageError
from mmcli.run.options import CommonOptions
from mmcli.run.pipeline import Job
from mmcli.run.task import Outcome, Task
from mmcli.sinks.output import Record

COLUMNS = ["input", "question", "answer", "model", "error"]
TABLE_COLUMNS = ["input", "question", "answer"]


def parse_questions(questions: list[str] | None, questions_file: Path | None) -> list[str]:
    """--question (repeatable) and --questions-file (one per line; lines starting with # are comments)."""
    found = [q.strip() for q in questions or []]
    if questions_file is not None:
        found += read_list_file(questions_file, "--questions-file", "questions", FULL_LINE_COMMENT)
    found = [q for q in found if q]
    if not found:
        raise UsageError('no question: pass --question "What color is it?" or --questions-file FILE')
    refuse_duplicates(found, "question")  # one record (and resume key) per image and question
    return found


@with_common_options
def vqa(
    inputs: Inputs = None,
    question: Annotated[
        list[str] | None,
        typer.Option("--question", "-Q", help="A question; repeatable.", show_default=False),
    ] = None,
    questions_file: Annotated[
        Path | None,
        typer.Option(
            "--questions-file",
            help='A UTF-8 file with one question per line; lines starting with "#" are comments.',
        ),
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
    from mmcli.modeling import registry, tasks

    questions = parse_questions(question, questions_file)
    options: Any = generate_options(max_new_tokens, num_beams, sample, temperature, top_p, seed)
    spec = registry.resolve(common.model or registry.default_model("vqa"), common.revision)
    tasks.check_question_template(spec)
    return Job(Vqa(questions, options), common, spec).execute(inputs)


class Vqa(Task):
    name = "vqa"
    columns = COLUMNS
    table_columns = TABLE_COLUMNS
    needs = frozenset({"generate"})

    def __init__(self, questions: list[str], options: Any) -> None:
        self.questions = questions
        self.options = options

    def options_key(self) -> dict[str, Any]:
        return {"generate": dataclasses.asdict(self.options)}

    def parts(self) -> list[str]:
        return list(self.questions)  # one record (and resume key) per question

    def compute(self, backend: Any, batch: Any, n: int) -> list[list[str]]:
        per_question = [backend.generate(batch, [q] * n, self.options) for q in self.questions]
        return [list(answers) for answers in zip(*per_question, strict=True)]

    def records(self, done: list[Outcome]) -> list[list[Record]]:
        return [
            [
                {"input": o.item.input, "question": q, "answer": a, "model": self.model}
                for q, a in zip(self.questions, o.value, strict=True)
            ]
            for o in done
        ]
