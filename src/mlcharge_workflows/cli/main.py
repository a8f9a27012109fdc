"""The ``mlcharge`` command line: one module per command group, each with ``register(app)``."""

from __future__ import annotations

import typer

from mlcharge_workflows.cli import compare, data, migrate, model, scf, submit

app = typer.Typer(
    name="mlcharge",
    help="Start DFT SCF from a machine-learned electron density and measure what it saves.",
    no_args_is_help=True,
    add_completion=False,
)

for _module in (scf, data, model, compare, submit, migrate):
    _module.register(app)


def main() -> None:
    """Entry point of the ``mlcharge`` script."""
    app()


if __name__ == "__main__":
    main()
