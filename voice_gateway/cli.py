"""`voiceagent`: the one console command; every way in is discoverable with --help."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console

from crm.actor import Actor
from crm.brokers import service as broker_service
from crm.config import get_settings
from crm.db import session_scope
from crm.errors import Problem
from voice_gateway.commands import bench as bench_commands
from voice_gateway.commands import leads as leads_commands
from voice_gateway.commands import simulate as simulate_commands

app = typer.Typer(
    help="Real-time voice agent server and CRM for real-estate brokers.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
broker_app = typer.Typer(help="Brokers (tenants) and their API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(broker_app, name="broker")
app.add_typer(leads_commands.app, name="leads")
app.add_typer(bench_commands.app, name="bench")
app.command("simulate-call")(simulate_commands.simulate_call)

console = Console(soft_wrap=True)
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Migrate the configured database up to REVISION (default: head)."""
    from crm.migrate import upgrade

    upgrade(revision=revision)
    console.print(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base"),
) -> None:
    """Migrate the configured database down to REVISION."""
    from crm.migrate import downgrade

    downgrade(revision=revision)
    console.print(f"database at {revision}")


@broker_app.command("create")
def broker_create(
    name: str,
    twilio_number: Annotated[
        list[str] | None, typer.Option("--twilio-number", help="E.164; repeatable")
    ] = None,
    legal_name: Annotated[
        str | None, typer.Option(help="Business legal name said on calls")
    ] = None,
    time_zone: Annotated[str, typer.Option(help="IANA time zone")] = "UTC",
    locale: Annotated[str, typer.Option(help="es or en")] = "es",
) -> None:
    """Create a broker and print its first API key (shown only this once)."""
    try:
        with session_scope() as db:
            broker = broker_service.create(
                db,
                name=name,
                legal_name=legal_name,
                time_zone=time_zone,
                locale=locale,
                twilio_numbers=twilio_number or [],
                actor=Actor.cli(),
            )
            _, key = broker_service.create_api_key(db, broker=broker, actor=Actor.cli())
            broker_id = broker.id
    except Problem as exc:
        raise _fail(exc.detail) from None
    console.print(f"broker {broker_id} created: {name}")
    console.print(f"API key (shown once): [bold]{key}[/bold]")


@broker_app.command("rotate-key")
def broker_rotate_key(broker_id: int) -> None:
    """Revoke every live key of BROKER_ID and print a new one."""
    try:
        with session_scope() as db:
            broker = broker_service.get_or_raise(db, broker_id=broker_id)
            _, key = broker_service.rotate_api_keys(db, broker=broker, actor=Actor.cli())
    except Problem as exc:
        raise _fail(exc.detail) from None
    console.print(f"new API key (shown once): [bold]{key}[/bold]")


@broker_app.command("revoke-key")
def broker_revoke_key(broker_id: int, key_id: int) -> None:
    """Revoke one API key of BROKER_ID."""
    try:
        with session_scope() as db:
            broker_service.revoke_api_key(db, broker_id=broker_id, key_id=key_id, actor=Actor.cli())
    except Problem as exc:
        raise _fail(exc.detail) from None
    console.print(f"key {key_id} revoked")


@broker_app.command("list")
def broker_list() -> None:
    """List brokers with their numbers and live key prefixes."""
    from sqlalchemy import select

    from crm.brokers.models import Broker

    with session_scope() as db:
        for broker in db.scalars(select(Broker).order_by(Broker.id)):
            keys = [
                k.prefix
                for k in broker_service.list_api_keys(db, broker_id=broker.id)
                if k.revoked_at is None
            ]
            numbers = ", ".join(n.e164 for n in broker.phone_numbers) or "-"
            console.print(
                f"{broker.id}\t{broker.name}\tnumbers: {numbers}\tkeys: {', '.join(keys) or '-'}"
            )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the API, the Twilio webhooks and the media WebSocket in one ASGI app."""
    import uvicorn

    from crm.migrate import upgrade

    if get_settings().is_sqlite:
        upgrade()
    uvicorn.run(
        "voice_gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="TCP port for the demo API")] = 8000,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Seed and print, then exit")] = False,
) -> None:
    """The embedded main job: SQLite, a seeded demo broker, the API on localhost."""
    from voice_gateway.demo import prepare_demo

    info = prepare_demo()
    console.print(f"database: {info.database_url}")
    console.print(f"demo broker {info.broker_id} ({info.broker_name}), {info.leads} demo leads")
    console.print(f"API key (shown once): [bold]{info.api_key}[/bold]")
    console.print(f"docs: http://127.0.0.1:{port}/docs")
    console.print(
        f"try:  curl -H 'Authorization: Bearer {info.api_key}' http://127.0.0.1:{port}/api/v1/leads"
    )
    if no_serve:
        return
    serve(host="127.0.0.1", port=port, workers=1)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app()


if __name__ == "__main__":
    main()
