"""The Typer root: registers the subcommands and is the one place errors become exit statuses.

Importing this module must not import torch or transformers (``--help`` and completion stay instant):
each command imports them inside its body.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from mmcli.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_USAGE, MmcliError
from mmcli.version import __version__

# Each subcommand's module is imported only when the app is built for it (``build_app``): a run imports its
# own command alone, which keeps a call to a warm ``mmcli serve`` quick.
COMMANDS: dict[str, str] = {
    "classify": "mmcli.commands.classify:classify",
    "caption": "mmcli.commands.caption:caption",
    "vqa": "mmcli.commands.vqa:vqa",
    "embed": "mmcli.commands.embed:embed",
    "compare": "mmcli.commands.compare:compare",
    "eval": "mmcli.commands.eval:eval_command",
    "models": "mmcli.commands.models:models",
    "doctor": "mmcli.commands.doctor:doctor",
    "pull": "mmcli.commands.pull:pull",
    "serve": "mmcli.commands.serve:serve",
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mmcli {__version__}")
        raise typer.Exit()


def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Zero-shot multimodal models from the command line."""


# A full disk, a quota, a read-only or failing device: the machine's state, not a bug of mmcli's.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


class StdoutClosed(Exception):
    """The reader of stdout went away. Not an OSError: click turns an EPIPE OSError into exit status 1."""


def _pipe_guard(command: Callable[..., int]) -> Callable[..., int]:
    """Pass an EPIPE out of ``command`` as StdoutClosed, which main() turns into exit status 141."""

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> int:
        try:
            return command(*args, **kwargs)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise StdoutClosed from exc
            raise

    return guarded


def build_app(only: str | None = None) -> typer.Typer:
    """The Typer app with every subcommand, or with ``only`` that one (what a run of it needs)."""
    import importlib

    app = typer.Typer(
        name="mmcli",
        help="Zero-shot multimodal models from the command line: classify, caption, vqa, embed, compare.\n\n"
        "Results go to stdout (a table on a terminal, JSON lines in a pipe); messages go to stderr.",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(root)
    for name, target in COMMANDS.items():
        if only is None or name == only:
            module, _, attr = target.partition(":")
            app.command(name)(_pipe_guard(getattr(importlib.import_module(module), attr)))
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app, for tools that look for it (completion, docs)
        return build_app()
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every outcome to a documented exit status."""
    try:  # typer >= 0.20 vendors its own click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover - older typer with the click package
        from click.exceptions import ClickException  # type: ignore[assignment]

    args = sys.argv[1:] if argv is None else argv
    first = args[0] if args else None
    try:
        app = build_app(first if first in COMMANDS else None)
        code = app(args=argv, prog_name="mmcli", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except ClickException as exc:  # bad options, missing arguments
        _show_usage_error(exc)
        code = EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("mmcli: interrupted\n")
        code = EXIT_INTERRUPTED
    except MmcliError as exc:
        sys.stderr.write(f"mmcli: error: {exc}\n")
        code = exc.exit_code
    except (BrokenPipeError, StdoutClosed):
        # The reader went away (`mmcli ... | head`): stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141
    except Exception as exc:
        if os.environ.get("MMCLI_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
            where = f" {exc.filename}" if exc.filename else " the output"
            sys.stderr.write(f"mmcli: error: cannot write{where}: {exc.strerror}; re-run to resume\n")
        else:
            sys.stderr.write(f"mmcli: internal error: {type(exc).__name__}: {exc}\n")
            sys.stderr.write("  (set MMCLI_DEBUG=1 for the traceback, and please report it)\n")
        code = EXIT_FATAL
    resume = sys.modules.get("mmcli.sinks.resume")
    if resume is not None:
        resume.release_held()  # output locks of a run that stopped before writing
    status = code if isinstance(code, int) else 0
    if argv is None and "torch" in sys.modules:
        _exit_now(status)
    sys.exit(status)


def _show_usage_error(exc: Exception) -> None:
    """A bad option or argument as one line naming the help to read; a bare subcommand still shows its help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()  # type: ignore[attr-defined]
        return
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path} --help" if ctx is not None else "mmcli --help"
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    sys.stderr.write(f"mmcli: error: {message} (see {where})\n")


def _exit_now(status: int) -> None:
    """Exit without the interpreter's teardown, which takes about a second once torch is loaded.

    Everything mmcli writes is already closed and fsync'd by then (writers, the cache, Ray is shut down);
    only stdout and stderr need a flush. Used for real runs only, never when main() is called with argv.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            status = status or 141
    os._exit(status)


if __name__ == "__main__":
    main()
