"""`voiceagent`: the one console command; every way in is discoverable with --help."""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any

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
        "voice_gateway.app:create_served_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )


@app.command()
def demo(
    port: Annotated[
        int, typer.Option(help="TCP port; a free one is used if it is taken (or 0)")
    ] = 8000,
    serve_after: Annotated[
        bool, typer.Option("--serve", help="Keep the API running after the call")
    ] = False,
    no_call: Annotated[bool, typer.Option("--no-call", help="Seed and print, no call")] = False,
) -> None:
    """The embedded main job: a whole simulated phone call with no services and no network.

    SQLite, offline speech (PocketSphinx, eSpeak NG, WebRTC VAD), a demo broker and
    leads; the simulator phones the server as Twilio would, then the CRM's record of
    the call is printed.
    """
    from voice_gateway.demo import configure_embedded, prepare_demo

    port = _free_port(port)
    token = configure_embedded(port)
    info = prepare_demo()
    console.print(f"database: {info.database_url}")
    console.print(f"demo broker {info.broker_id} ({info.broker_name}), {info.leads} leads")
    if no_call:
        _print_access(info.api_key, port)
        return
    server, thread = _start_server(port)
    try:
        stored = _demo_call(port, token)
    finally:
        if not serve_after:
            server.should_exit = True
            thread.join(timeout=10)
    _print_stored(stored)
    if serve_after:
        _print_access(info.api_key, port)
        console.print("serving; press Ctrl+C to stop")
        try:
            thread.join()
        except KeyboardInterrupt:
            server.should_exit = True
            thread.join(timeout=10)


def _free_port(preferred: int) -> int:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_server(port: int) -> tuple[Any, threading.Thread]:
    import time

    import uvicorn

    config = uvicorn.Config(
        "voice_gateway.app:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws_max_size=1 << 20,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise _fail("the demo server did not start")
        time.sleep(0.05)
    return server, thread


def _demo_call(port: int, token: str) -> Any:
    import asyncio
    import time

    from voice_gateway.demo import DEMO_CALLER, DEMO_NUMBER, DEMO_SCRIPT, stored_call
    from voice_gateway.simulator.caller import CallOptions, run_call
    from voice_gateway.simulator.script import parse_script

    settings = get_settings()
    audio = settings.data_dir / "demo-agent-audio.wav"
    console.print(f"calling {DEMO_NUMBER} from {DEMO_CALLER}, as Twilio would:")
    result = asyncio.run(
        run_call(
            f"http://127.0.0.1:{port}",
            parse_script(DEMO_SCRIPT, language="en"),
            options=CallOptions(
                from_number=DEMO_CALLER,
                to_number=DEMO_NUMBER,
                public_host=f"127.0.0.1:{port}",
                auth_token=token,
                timeout_s=30,
                save_audio=audio,
                echo=lambda line: console.print(f"  {line}", highlight=False),
            ),
        )
    )
    if "call_id" not in result.parameters:
        raise _fail(
            f"the simulated call never reached the server: {'; '.join(map(str, result.errors))}"
        )
    call_id = int(result.parameters["call_id"])
    deadline = time.monotonic() + 15
    while True:  # the session finishes the call in the CRM right after the socket closes
        stored = stored_call(call_id)
        if stored.end_reason is not None or time.monotonic() > deadline:
            return stored
        time.sleep(0.1)


def _print_stored(stored: Any) -> None:
    console.print(
        f"\n[bold]What the CRM stored[/bold] (call {stored.call_id}: {stored.status}, "
        f"ended by {stored.end_reason}, {stored.duration_s} s)"
    )
    for turn in stored.turns:
        latency = f"  [{turn.response_ms} ms to reply]" if turn.response_ms is not None else ""
        cut = " (interrupted)" if turn.interrupted else ""
        console.print(
            f"  {turn.start_ms / 1000:6.2f}s {turn.role:>6}: {turn.text}{cut}{latency}",
            highlight=False,
        )
    console.print(f"recording: {stored.recording_path}")
    console.print(f"lead: {stored.lead_name}, stage {stored.lead_stage}, score {stored.lead_score}")


def _print_access(api_key: str, port: int) -> None:
    console.print(f"API key (shown once): [bold]{api_key}[/bold]")
    console.print(f"docs: http://127.0.0.1:{port}/docs")
    console.print(
        f"try:  curl -H 'Authorization: Bearer {api_key}' http://127.0.0.1:{port}/api/v1/calls"
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app()


if __name__ == "__main__":
    main()
