"""`voiceagent leads …`: bulk work on a broker's leads from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crm import phones
from crm.actor import Actor
from crm.brokers import service as broker_service
from crm.config import get_settings
from crm.db import session_scope
from crm.errors import Problem
from crm.leads import import_service
from crm.leads.import_service import ImportReport

app = typer.Typer(help="Leads: bulk import.", no_args_is_help=True)

#: Exit codes, so a script can tell "nothing imported" from "imported with bad rows".
EXIT_FILE_REFUSED = 1
EXIT_ROWS_FAILED = 2


@app.command("import")
def import_leads(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV file, UTF-8"),
    ],
    broker: Annotated[int, typer.Option("--broker", help="Id of the broker who owns the leads")],
    country: Annotated[
        str | None,
        typer.Option("--country", help="Region for numbers written without +, e.g. ES or MX"),
    ] = None,
    show_errors: Annotated[int, typer.Option(help="How many row errors to print", min=0)] = 50,
) -> None:
    """Import leads from FILE: new phones are created, known ones updated, bad rows listed.

    Valid rows are imported even when others fail. Exit code 2: some rows failed.
    Exit code 1: the file was refused as a whole and nothing was imported.
    """
    out = Console()
    err = Console(stderr=True)
    region = _region(country)
    limit = get_settings().import_max_bytes
    if file.stat().st_size > limit:
        err.print(f"[red]error:[/red] {file} is over the import limit of {limit} bytes")
        raise typer.Exit(EXIT_FILE_REFUSED)
    data = file.read_bytes()
    try:
        with (
            session_scope() as db,
            Progress(
                TextColumn("importing {task.fields[name]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=out,
                transient=False,
            ) as bar,
        ):
            broker_service.get_or_raise(db, broker_id=broker)
            task = bar.add_task("import", total=None, name=file.name)
            report = import_service.import_csv(
                db,
                broker_id=broker,
                data=data,
                actor=Actor.cli(),
                default_region=region,
                filename=file.name,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except Problem as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(EXIT_FILE_REFUSED) from None
    _print_report(out, report, show_errors=show_errors)
    if report.failed:
        raise typer.Exit(EXIT_ROWS_FAILED)


def _region(country: str | None) -> str | None:
    if country is None:
        return None
    try:
        return phones.check_region(country)
    except phones.UnknownRegion as exc:
        raise typer.BadParameter(str(exc), param_hint="--country") from None


def _print_report(out: Console, report: ImportReport, *, show_errors: int) -> None:
    out.print(
        f"rows: {report.rows}  created: {report.created}  updated: {report.updated}  "
        f"unchanged: {report.unchanged}  failed: {report.failed}"
    )
    if report.ignored_columns:
        out.print(f"ignored columns: {', '.join(report.ignored_columns)}")
    if not report.errors or show_errors == 0:
        return
    table = Table("row", "field", "error", title="Rows not imported")
    for error in report.errors[:show_errors]:
        table.add_row(str(error.row), error.field or "-", error.message)
    out.print(table)
    hidden = len(report.errors) - show_errors
    if hidden > 0:
        out.print(f"… and {hidden} more errors (use --show-errors to see more)")
