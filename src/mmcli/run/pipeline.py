"""The run shared by every task: resolve the model, expand inputs, skip finished work, decode in threads,
look up cached embeddings, batch, write, report.

inputs -> resume check -> loader (read + cache lookup + decode + preprocess, worker threads, a batch or two
ahead) -> backend -> task -> writer. An input that fails anywhere becomes an error record and the run goes on.

``Job`` chooses where the work runs: in this process (the loop here), on Ray (``run.engines.ray``) or in a
running ``mmcli serve`` (``run.remote.offload``); its set-up is ``run.job``, its writing and ending
``run.lifecycle``, which those engines drive.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from mmcli.errors import UsageError
from mmcli.run.lifecycle import JobRun
from mmcli.run.task import Outcome, Task
from mmcli.sinks.output import Record


class Job(JobRun):
    """One run of one task (``JobSetup``, ``JobRun``), and the choice of where it runs."""

    def use_server(self) -> bool:
        """Send the work to a running ``mmcli serve`` (see run.remote.offload) rather than load the model here."""
        if self.options.no_server or self.options.engine != "local":
            return False
        from mmcli.run.remote import client as remote

        self.remote = remote.connect(self.reporter.warn)
        return self.remote is not None

    def execute(self, inputs: Sequence[str] | None) -> int:
        """The whole run of a per-image task: load, skip finished work, compute, write, report."""
        inputs = list(inputs or [])
        if not inputs and not self.options.manifest and type(self.task).leading is Task.leading:
            raise UsageError(
                "no inputs: give image files, directories, globs, URLs, - (paths on stdin) or --manifest FILE"
            )
        if self.options.engine == "ray":
            from mmcli.run.engines.ray import run as run_on_ray

            return run_on_ray(self, inputs)
        if self.use_server():
            from mmcli.run.remote import offload

            return offload.execute(self, inputs)
        task = self.task
        backend = self.load()
        try:
            task.prepare(backend)
        except BaseException:
            self.close_decoders()
            raise

        def body() -> None:
            self.write_leading(task.leading(backend))
            work = self.pending(self.items(inputs))
            if task.embeds_images:
                stream = self.encode_images(work)
            else:
                stream = self.forward(work, lambda batch, n: task.compute(backend, batch, n))
            self.write_batches(with_records(task, stream))

        return self.run(body, inputs)


def with_records(
    task: Task, stream: Iterable[list[Outcome]]
) -> Iterator[list[tuple[Outcome, list[Record] | None]]]:
    """Each batch's inputs with their records, computed by the task for those that did not fail."""
    for batch in stream:
        good = [out for out in batch if out.error is None]
        produced = iter(task.records(good) if good else [])
        yield [(out, None if out.error is not None else next(produced)) for out in batch]
