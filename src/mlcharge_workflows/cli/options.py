"""Command-line options that several commands share, declared once."""

from __future__ import annotations

import typer

#: ``--pseudo EL=FILE`` (repeatable): a user UPF replacing the registry's file of an element
#: (parsed and validated by :func:`mlcharge_workflows.catalogue.qe_protocol`).
PSEUDO = typer.Option([], "--pseudo", help="QE: EL=FILE, a UPF file (NC or US) "
                      "replacing the registry's for that element (repeatable).")


def overwrite(what: str) -> typer.models.OptionInfo:
    """``--overwrite``: replace ``what`` (results are never replaced without it)."""
    return typer.Option(False, "--overwrite", help=f"Replace {what}.")
