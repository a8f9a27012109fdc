"""Command-line options that several commands share, declared once."""

from __future__ import annotations

import typer

#: ``--pseudo EL=FILE`` (repeatable): a user UPF replacing the registry's file of an element
#: (parsed and validated by :func:`mlcharge_workflows.catalogue.qe_protocol`).
PSEUDO = typer.Option([], "--pseudo", help="QE: EL=FILE, a UPF file (NC or US) "
                      "replacing the registry's for that element (repeatable).")


#: ``--launchpad`` / ``--project``: where FireWorks work goes (MongoDB, or the embedded folder).
LAUNCHPAD = typer.Option(None, "--launchpad", "-l", help="FireWorks my_launchpad.yaml "
                         "(MongoDB). Default: the embedded project.")
PROJECT = typer.Option(None, "--project", "-p", help="Embedded project folder (default: "
                       "MLCHARGE_PROJECT_DIR or ./mlcharge_project).")
#: ``--protocol``: a YAML/JSON file of QEProtocol fields (unknown fields refused).
PROTOCOL = typer.Option(None, "--protocol", help="YAML/JSON file of QEProtocol fields "
                        "overriding the defaults.")


def overwrite(what: str) -> typer.models.OptionInfo:
    """``--overwrite``: replace ``what`` (results are never replaced without it)."""
    return typer.Option(False, "--overwrite", help=f"Replace {what}.")
