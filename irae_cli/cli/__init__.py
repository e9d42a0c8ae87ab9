"""The ``irae`` command: one thin module per subcommand (spaCy-style).

Every flag of ``irae X`` is declared and handled in ``irae_cli/cli/X.py``; each
module only parses, calls one plain function, and prints.  Torch is imported
inside the commands so ``irae --help`` stays fast.
"""

from __future__ import annotations

import typer

from .. import __version__
from . import benchmark, degrade, export, restore, train

app = typer.Typer(
    name="irae",
    help="Batch image restoration (denoise, JPEG, inpaint) with the Invertible Restoring Autoencoder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"irae {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Batch image restoration with the Invertible Restoring Autoencoder."""


for module in (train, restore, degrade, benchmark, export):
    module.register(app)


def run() -> None:
    import sys

    from ..errors import EXIT_USAGE, one_line
    from ..interrupts import catch_sigterm
    from ._common import empty_argument_problem

    problem = empty_argument_problem(sys.argv[1:])
    if problem:  # checked before typer turns '' into a default or '.'
        print(f"irae: error: {one_line(problem)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    catch_sigterm()  # every command stops on SIGTERM as on Ctrl-C (irae_cli.interrupts)
    app()
