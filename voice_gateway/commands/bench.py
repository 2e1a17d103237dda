"""`voiceagent bench …`: benchmarks that print figures (no timed assertions anywhere).

`bench crm` seeds PostgreSQL with 100,000 leads and 1,000,000 stage-history rows (and a
timeline entry per stay) and times the broker API in-process through the real ASGI app,
so the figures include routing, validation, tenancy, SQL and serialisation.

`bench voice` runs the gateway in a child process on one core with fake providers and
phones it with the call simulator from another core, 100 calls and then a ramp, and
prints latency against its floor, errors and CPU per level (voice_gateway/bench_voice.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Benchmarks that print figures (p50/p95).", no_args_is_help=True)
console = Console()

DEFAULT_BENCH_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/voiceagent_bench"


def _ensure_database(url: str) -> None:
    """Create the benchmark database when missing (needs a PostgreSQL superuser URL)."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{parsed.database}"')


def _use_database(url: str) -> None:
    """Point this process's settings, engine and sessions at `url`."""
    from crm import config, db

    os.environ["DATABASE_URL"] = url
    config.get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@app.command("crm")
def bench_crm(
    database_url: Annotated[
        str, typer.Option(envvar="BENCH_DATABASE_URL", help="PostgreSQL database to seed and use")
    ] = DEFAULT_BENCH_DB,
    leads: Annotated[int, typer.Option(help="Leads to seed (ten history rows each)")] = 100_000,
    requests: Annotated[int, typer.Option(help="Timed requests per scenario")] = 300,
    warmup: Annotated[int, typer.Option(help="Untimed requests per scenario first")] = 30,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed for request choice")] = 7,
) -> None:
    """Seed PostgreSQL and print p50/p95/p99 for the lead list, a lead with its
    timeline and the pipeline metrics."""
    from crm.benchseed import seed, settle
    from crm.db import get_engine, session_scope
    from crm.migrate import upgrade

    if not database_url.startswith("postgresql"):
        raise typer.BadParameter("the CRM benchmark needs PostgreSQL", param_hint="--database-url")
    _ensure_database(database_url)
    _use_database(database_url)
    upgrade(database_url)
    started = time.perf_counter()
    with session_scope() as db:
        seeded = seed(db, leads=leads)
    settle(get_engine())
    console.print(
        f"seeded broker {seeded.broker_id}: {seeded.leads:,} leads, "
        f"{seeded.history_rows:,} stage-history rows "
        f"({'new' if seeded.created else 'reused'}; {time.perf_counter() - started:.1f} s)"
    )
    results = asyncio.run(
        _measure(seeded.broker_id, seeded.api_key, requests, warmup, random.Random(seed_value))  # noqa: S311
    )
    table = Table(title=f"CRM API, {requests} requests per scenario, in-process ASGI")
    for column in ("scenario", "p50 ms", "p95 ms", "p99 ms", "errors", "aim"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for name, samples, errors, aim in results:
        table.add_row(
            name,
            f"{_percentile(samples, 0.50):.1f}",
            f"{_percentile(samples, 0.95):.1f}",
            f"{_percentile(samples, 0.99):.1f}",
            str(errors),
            aim,
        )
    console.print(table)


async def _measure(
    broker_id: int, key: str, requests: int, warmup: int, rng: random.Random
) -> list[tuple[str, list[float], int, str]]:
    import httpx
    from sqlalchemy import func, select

    from crm.db import session_scope
    from crm.leads.models import Lead
    from crm.timeutil import utcnow
    from voice_gateway.app import create_app

    with session_scope() as db:
        low, high = db.execute(
            select(func.min(Lead.id), func.max(Lead.id)).where(Lead.broker_id == broker_id)
        ).one()
    year_ago = (utcnow() - timedelta(days=365)).isoformat()
    stages = ["new", "contacted", "qualified", "visit_scheduled", "visited", "negotiating"]

    def lead_list() -> str:
        stage = rng.choice(stages)
        low_score = rng.randrange(0, 60)
        offset = 50 * rng.randrange(0, 20)
        return (
            f"/api/v1/leads?stage={stage}&score_min={low_score}&score_max={low_score + 40}"
            f"&sort=score&order=desc&limit=50&offset={offset}"
        )

    def lead_search() -> str:
        return f"/api/v1/leads?q={rng.randrange(1, 99_999)}&limit=50"

    def lead_inactive() -> str:
        return (
            f"/api/v1/leads?inactive_days={rng.randrange(20, 200)}&sort=last_activity_at&limit=50"
        )

    def one_lead() -> str:
        return f"/api/v1/leads/{rng.randrange(low, high + 1)}"

    def timeline() -> str:
        return f"/api/v1/leads/{rng.randrange(low, high + 1)}/timeline?limit=50"

    scenarios: list[tuple[str, Callable[[], str], str]] = [
        ("lead list: stage + score range, page of 50", lead_list, "p95 < 30"),
        ("lead list: inactive N days, page of 50", lead_inactive, "p95 < 30"),
        ("lead list: text search, page of 50", lead_search, "-"),
        ("one lead", one_lead, "-"),
        ("one lead's timeline, page of 50", timeline, "-"),
        ("pipeline metrics, last 30 days", lambda: "/api/v1/pipeline/metrics", "p95 < 300"),
        (
            "pipeline metrics, last 365 days",
            lambda: f"/api/v1/pipeline/metrics?since={year_ago.replace('+', '%2B')}",
            "p95 < 300",
        ),
        ("rotting leads per stage", lambda: "/api/v1/pipeline/rotting", "-"),
    ]
    headers = {"Authorization": f"Bearer {key}"}
    results: list[tuple[str, list[float], int, str]] = []
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for name, make_url, aim in scenarios:
            samples: list[float] = []
            errors = 0
            for i in range(warmup + requests):
                url = make_url()
                t0 = time.perf_counter()
                response = await client.get(url, headers=headers)
                elapsed = (time.perf_counter() - t0) * 1000
                if response.status_code != 200:
                    errors += 1
                    if errors == 1:
                        console.print(f"[red]{name}: {response.status_code} {response.text[:300]}")
                if i >= warmup:
                    samples.append(elapsed)
            console.print(f"{name}: mean {statistics.fmean(samples):.1f} ms")
            results.append((name, samples, errors, aim))
    return results


@app.command("voice")
def bench_voice(
    calls: Annotated[int, typer.Option(min=1, help="The headline level: calls at once")] = 100,
    ramp: Annotated[bool, typer.Option(help="Then ramp up until a bound breaks")] = True,
    ramp_start: Annotated[int, typer.Option(min=1, help="First level of the ramp")] = 50,
    ramp_step: Annotated[int, typer.Option(min=1, help="Calls added per level")] = 50,
    max_calls: Annotated[int, typer.Option(min=1, help="Last level of the ramp")] = 1000,
    turns: Annotated[int, typer.Option(min=1, max=50, help="Caller turns per call")] = 4,
    barge_in_at: Annotated[
        int | None,
        typer.Option(min=0, help="Every second turn barges in MS into the agent's reply"),
    ] = 400,
    no_barge_in: Annotated[bool, typer.Option("--no-barge-in", help="No barge-ins")] = False,
    stt_latency_ms: Annotated[int, typer.Option(min=0, help="Fake STT latency")] = 100,
    llm_latency_ms: Annotated[int, typer.Option(min=0, help="Fake LLM first-token latency")] = 200,
    tts_latency_ms: Annotated[int, typer.Option(min=0, help="Fake TTS first-byte latency")] = 80,
    endpoint_silence_ms: Annotated[int, typer.Option(min=100, help="End-of-turn silence")] = 600,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="BENCH_VOICE_DATABASE_URL",
            help="PostgreSQL URL to use (created if missing); default: SQLite in the work dir",
        ),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep the server's log, database and recordings here")
    ] = None,
    server_core: Annotated[int, typer.Option(min=0, help="CPU core of the gateway")] = 0,
    simulator_core: Annotated[int, typer.Option(min=0, help="CPU core of the simulator")] = 1,
    measure_s: Annotated[
        float, typer.Option(min=1, help="Seconds each level keeps its calls up, once spread")
    ] = 45.0,
) -> None:
    """Concurrent calls against one gateway process on one core (fake providers at fixed
    latencies): response and barge-in latency per level, errors, CPU, and how many calls
    one core holds within the issue's bounds. Exits 1 when the headline level breaks."""
    from voice_gateway.bench_voice import BenchError, BenchOptions, Ramp, run_bench
    from voice_gateway.bench_voice_figures import FigureError, ProviderLatencies

    if database_url is not None and database_url.startswith("postgresql"):
        _ensure_database(database_url)
    try:
        options = BenchOptions(
            latencies=ProviderLatencies(
                stt_ms=stt_latency_ms,
                llm_first_token_ms=llm_latency_ms,
                tts_ms=tts_latency_ms,
                endpoint_silence_ms=endpoint_silence_ms,
            ),
            ramp=Ramp(first=calls, start=ramp_start, step=ramp_step, stop=max_calls, enabled=ramp),
            turns=turns,
            barge_in_at_ms=None if no_barge_in else barge_in_at,
            database_url=database_url,
            work_dir=work_dir,
            server_core=server_core,
            simulator_core=simulator_core,
            measure_s=measure_s,
        )
        report = asyncio.run(run_bench(options, out=typer.echo))
    except (BenchError, FigureError) as exc:
        typer.echo(f"error: {exc.reason}", err=True)
        raise typer.Exit(2) from None
    headline = next((level for level in report.levels if level.calls == calls), None)
    if headline is None or not headline.holds:
        raise typer.Exit(1)
