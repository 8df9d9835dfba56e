"""The `tlkit` command: parses options and calls the library; user errors are one line, no traceback."""
from __future__ import annotations

import sys

import click

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
    """Turn TlkitError into `Error: message` and exit status 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TlkitError as error:
            click.echo(f"tlkit: error: {error}", err=True)
            sys.exit(error.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
@click.version_option(package_name="tlkit")
@click.pass_context
def cli(ctx, verbose):
    """Transfer learning for image folders: pick a recipe, point it at your images, get a served model."""
    setup_logging(verbose)
    if ctx.invoked_subcommand not in (None, "recipes"):
        start_tensorflow(verbose)


for _command in (recipes_command, run_command, export_command, predict_command, data, evaluate_command,
                 explain_command, lr_find_command, cache):
    cli.add_command(_command)


def main():
    cli(prog_name="tlkit")
