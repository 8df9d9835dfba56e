"""The `tlkit` command: parses options and calls the library; user errors are one line, no traceback."""
from __future__ import annotations

import sys

import click

from tlkit.cli.bases import bases_command
from tlkit.cli.cache import cache
from tlkit.cli.data import data
from tlkit.cli.evaluate import evaluate_command
from tlkit.cli.explain import explain_command
from tlkit.cli.lrfind import lr_find_command
from tlkit.cli.run import recipes_command, run_command
from tlkit.cli.serving import export_command, predict_command
from tlkit.errors import TlkitError
from tlkit.ui import setup_logging, start_tensorflow


class _Group(click.Group):
    """Every user error is one line, `tlkit: error: message`, with exit status 2 (130 after Ctrl-C), never a
    traceback: tlkit's own errors, bad options (click's usage errors), and what the system refused (a file that
    vanished or cannot be read or written, memory running out); -v shows the traceback of the last two."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TlkitError as error:
            _fail(str(error), error.exit_code)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else "tlkit"
            _fail(f"{error.format_message()} (see `{command} --help`)", 2)
        except (OSError, MemoryError) as error:
            if ctx.params.get("verbose"):
                raise
            _fail(_system_error(error), 2)
        except KeyboardInterrupt:  # outside training (which saves and says how to resume): nothing to keep
            _fail("interrupted (Ctrl-C)", 130)


def _fail(message: str, code: int):
    click.echo(f"tlkit: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _system_error(error: Exception) -> str:
    if isinstance(error, MemoryError):
        return "out of memory; use a smaller --image-size or --batch-size (-v shows where)"
    where = f"{error.filename}: " if getattr(error, "filename", None) else ""
    return (f"{where}{error.strerror or error} (a file or folder changed or cannot be read or written while tlkit "
            "worked; check it and run again, -v shows where)")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
@click.version_option(package_name="tlkit")
@click.pass_context
def cli(ctx, verbose):
    """Transfer learning for image folders: pick a recipe, point it at your images, get a served model."""
    setup_logging(verbose)
    if ctx.invoked_subcommand not in (None, "recipes", "bases"):
        start_tensorflow(verbose)


for _command in (recipes_command, bases_command, run_command, export_command, predict_command, data,
                 evaluate_command, explain_command, lr_find_command, cache):
    cli.add_command(_command)


def main():
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped, never crashes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    cli(prog_name="tlkit")
