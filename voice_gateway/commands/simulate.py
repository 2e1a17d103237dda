"""`voiceagent simulate-call URL`: phone the gateway as Twilio would, once or N at a time.

One call prints the conversation as it happens and a summary; `--concurrency N` runs N
calls at once and prints latency percentiles, errors and CPU. The exit code is 0 when
every call went cleanly, 1 when any call had an error, 2 when the command line or the
script cannot run.

Credentials default to the server's own settings (PUBLIC_HOST, TWILIO_AUTH_TOKEN and
TWILIO_ACCOUNT_SID from the environment or .env), so on the machine that runs the
server the signatures simply match.
"""

from __future__ import annotations

import asyncio
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from voice_gateway.simulator.audio_source import AudioSourceError
from voice_gateway.simulator.caller import DEFAULT_FROM, DEFAULT_TO, CallOptions, CallResult
from voice_gateway.simulator.dial import DialError
from voice_gateway.simulator.load import DEFAULT_STAGGER_MS, LoadOptions, run_load
from voice_gateway.simulator.script import (
    Script,
    ScriptError,
    TimedDtmf,
    build_script,
    load_script,
    parse_dtmf_at,
)

EXIT_CALL_ERRORS = 1
EXIT_USAGE = 2


class Language(StrEnum):
    es = "es"
    en = "en"


def simulate_call(
    url: Annotated[str, typer.Argument(help="The server's base URL, e.g. http://127.0.0.1:8000")],
    from_number: Annotated[
        str, typer.Option("--from", help="The caller's number, E.164")
    ] = DEFAULT_FROM,
    to_number: Annotated[
        str, typer.Option("--to", help="The number called: a broker's Twilio number, E.164")
    ] = DEFAULT_TO,
    say: Annotated[
        list[str] | None,
        typer.Option("--say", help="What the caller says, one turn each (repeatable)"),
    ] = None,
    wav: Annotated[
        list[Path] | None,
        typer.Option(
            "--wav",
            exists=True,
            dir_okay=False,
            readable=True,
            help="A recorded caller turn, after the --say ones (repeatable)",
        ),
    ] = None,
    script_file: Annotated[
        Path | None,
        typer.Option(
            "--script",
            exists=True,
            dir_okay=False,
            readable=True,
            help="A caller script file (see voice_gateway/simulator/script.py); "
            "replaces --say/--wav/--barge-in-at/--turns",
        ),
    ] = None,
    language: Annotated[
        Language, typer.Option(help="Language the caller's text is spoken in")
    ] = Language.es,
    barge_in_at: Annotated[
        int | None,
        typer.Option(
            "--barge-in-at",
            min=0,
            max=60_000,
            help="Every turn after the first cuts into the agent's reply MS after it starts",
        ),
    ] = None,
    dtmf: Annotated[
        list[str] | None,
        typer.Option("--dtmf", help="DIGIT@MS: press a key MS into the stream (repeatable)"),
    ] = None,
    save_audio: Annotated[
        Path | None,
        typer.Option(
            "--save-audio",
            dir_okay=False,
            help="Write the agent's audio as the caller heard it to this WAV (first call)",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=2000, help="Calls at once")] = 1,
    turns: Annotated[
        int | None,
        typer.Option(min=1, max=100, help="Caller turns per call (default: one per utterance)"),
    ] = None,
    public_host: Annotated[
        str | None,
        typer.Option(
            envvar="PUBLIC_HOST",
            help="The server's public host, which Twilio signs for (default: from settings)",
        ),
    ] = None,
    auth_token: Annotated[
        str | None,
        typer.Option(
            envvar="TWILIO_AUTH_TOKEN",
            show_default=False,
            help="The Twilio auth token to sign with (default: from settings; none: unsigned)",
        ),
    ] = None,
    account_sid: Annotated[
        str | None,
        typer.Option(envvar="TWILIO_ACCOUNT_SID", help="AccountSid to present"),
    ] = None,
    server_pid: Annotated[
        int | None, typer.Option(min=1, help="Report this server process's CPU use")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.5, max=600, help="Seconds to wait for the server to react")
    ] = 15.0,
    stagger_ms: Annotated[
        float, typer.Option(min=0, max=60_000, help="Milliseconds between call starts")
    ] = DEFAULT_STAGGER_MS,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary")] = False,
) -> None:
    """Phone the server as Twilio would: signed webhook, media stream in real time, the
    agent's audio played back (marks echoed, clear obeyed), latencies measured."""
    try:
        timed = [parse_dtmf_at(spec) for spec in dtmf or []]
        script = _script(script_file, say or [], wav or [], language, turns, barge_in_at, timed)
    except ScriptError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    settings_host, settings_token, settings_sid = _settings()
    call = CallOptions(
        from_number=from_number,
        to_number=to_number,
        public_host=public_host or settings_host,
        auth_token=auth_token or settings_token,
        account_sid=account_sid or settings_sid,
        timeout_s=timeout,
        save_audio=save_audio,
        echo=None if quiet or concurrency > 1 else typer.echo,
    )
    options = LoadOptions(
        call=call,
        script=script,
        stagger_ms=stagger_ms,
        server_pid=server_pid,
        progress=None if quiet or concurrency == 1 else typer.echo,
    )
    try:
        report = asyncio.run(run_load(url, concurrency, script.caller_turns, options=options))
    except (AudioSourceError, DialError) as exc:
        typer.echo(f"error: {exc.reason}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if concurrency == 1:
        for line in call_summary(report.results[0]):
            typer.echo(line)
    for line in report.lines():
        typer.echo(line)
    if not report.ok:
        raise typer.Exit(EXIT_CALL_ERRORS)


def _script(
    script_file: Path | None,
    says: list[str],
    wavs: list[Path],
    language: Language,
    turns: int | None,
    barge_in_at: int | None,
    timed: list[TimedDtmf],
) -> Script:
    if script_file is None:
        return build_script(
            says=says,
            wavs=wavs,
            language=language.value,
            turns=turns,
            barge_in_at_ms=barge_in_at,
            dtmf_at=timed,
        )
    if says or wavs or turns is not None or barge_in_at is not None:
        raise ScriptError("--script replaces --say, --wav, --turns and --barge-in-at")
    loaded = load_script(script_file, language=language.value)
    return Script(loaded.steps, loaded.timed_dtmf + tuple(timed))


def _settings() -> tuple[str | None, str | None, str | None]:
    """PUBLIC_HOST, TWILIO_AUTH_TOKEN, TWILIO_ACCOUNT_SID as the server would read them."""
    from voice_gateway.config import GatewaySettings

    try:
        settings = GatewaySettings()
    except ValidationError:
        return None, None, None
    token = settings.twilio_auth_token
    return (
        settings.public_http_base,
        token.get_secret_value() if token is not None else None,
        settings.twilio_account_sid,
    )


def call_summary(result: CallResult) -> list[str]:
    """What one call came to, after its conversation."""
    lines = [f"call {result.call_sid}: ended by {result.ended_by.value}"]
    if result.close_code is not None:
        lines[0] += f" (close {result.close_code})"
    if result.parameters.get("call_id"):
        lines[0] += f", server call id {result.parameters['call_id']}"
    if result.response_ms:
        listed = ", ".join(f"{ms:.0f}" for ms in result.response_ms)
        lines.append(f"response latency per turn: {listed} ms")
    if result.barge_in_ms:
        listed = ", ".join(f"{ms:.0f}" for ms in result.barge_in_ms)
        lines.append(f"barge-in latency: {listed} ms")
    lines.append(
        f"agent audio: {result.agent_played_ms / 1000:.1f} s heard, "
        f"{result.agent_dropped_ms / 1000:.1f} s cleared; marks echoed "
        f"{result.marks_echoed} played + {result.marks_cleared} cleared; "
        f"most buffered ahead {result.max_buffered_ms / 1000:.1f} s"
    )
    if result.dtmf_sent:
        lines.append(f"keys pressed: {''.join(result.dtmf_sent)}")
    if result.recording is not None:
        lines.append(f"agent audio saved to {os.fspath(result.recording)}")
    return lines
