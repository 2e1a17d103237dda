"""What the simulator itself costs: N calls against a minimal gateway in another process.

A load test is only as good as its load generator: if the simulator needed a core per
hundred calls, "200 calls" would measure the simulator. `bench_simulator` runs a
stand-in gateway (an unsigned webhook and a media socket that greets, answers every
caller turn with audio and a mark after a fixed delay, and clears when talked over) in
a child process, drives it with `run_load`, and prints the simulator's CPU (its
event-loop thread), the stand-in's, and how late the simulator's 20 ms beats fired.
`python -m voice_gateway.simulator.bench` runs it; `voiceagent bench` can wire it in.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
import socket
from collections.abc import Callable
from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voice_gateway.providers.base import FRAME_SAMPLES
from voice_gateway.simulator.caller import DEFAULT_TO, CallOptions
from voice_gateway.simulator.load import LoadOptions, LoadReport, run_load
from voice_gateway.simulator.script import build_script
from voice_gateway.twilio import protocol as tw
from voice_gateway.twilio import twiml

_AGENT_BYTE: Final = 0x20


def stand_in_app(*, greeting_ms: int, reply_ms: int, reply_delay_ms: int) -> Starlette:
    """A gateway stand-in: cheap per frame, so that the simulator is what is measured."""
    silence = bytes([0xFF]) * FRAME_SAMPLES

    async def voice(request: Request) -> Response:
        host = request.headers.get("host", "127.0.0.1")
        document = twiml.connect_stream(
            ws_url=f"ws://{host}/twilio/media", call_id=1, token=secrets.token_hex(8)
        )
        return Response(document, media_type="text/xml")

    async def media(ws: WebSocket) -> None:
        await ws.accept()
        sid = ""
        pending: set[str] = set()
        speech = silent = replies = 0
        sender: asyncio.Task[None] | None = None

        async def speak(name: str, ms: int, delay_ms: int) -> None:
            await asyncio.sleep(delay_ms / 1000)
            for offset in range(0, ms, 200):
                piece = bytes([_AGENT_BYTE]) * (8 * min(200, ms - offset))
                await ws.send_text(tw.serialize(tw.OutboundMedia(sid, piece)))
            pending.add(name)
            await ws.send_text(tw.serialize(tw.OutboundMark(sid, name)))

        try:
            while True:
                message = tw.parse_inbound(await ws.receive_text())
                if type(message) is tw.Media:
                    if message.payload != silence:
                        silent = 0
                        speech += 1
                        if speech == 5 and pending:
                            if sender is not None:
                                sender.cancel()
                            await ws.send_text(tw.serialize(tw.Clear(sid)))
                    elif speech:
                        silent += 1
                        if silent == 10:
                            speech = 0
                            replies += 1
                            sender = asyncio.create_task(
                                speak(f"reply-{replies}", reply_ms, reply_delay_ms)
                            )
                elif type(message) is tw.Mark:
                    pending.discard(message.name)
                elif type(message) is tw.Start:
                    sid = message.stream_sid
                    sender = asyncio.create_task(speak("greeting", greeting_ms, 0))
                elif type(message) is tw.Stop:
                    await ws.close()
                    return
        except WebSocketDisconnect:
            pass
        finally:
            if sender is not None:
                sender.cancel()

    return Starlette(
        routes=[
            Route("/twilio/voice", voice, methods=["POST"]),
            WebSocketRoute("/twilio/media", media),
        ]
    )


def _serve(sock: socket.socket, greeting_ms: int, reply_ms: int, reply_delay_ms: int) -> None:
    import uvicorn

    app = stand_in_app(greeting_ms=greeting_ms, reply_ms=reply_ms, reply_delay_ms=reply_delay_ms)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


async def bench_simulator(
    *,
    calls: int = 200,
    turns: int = 2,
    barge_in_at_ms: int | None = 300,
    stagger_ms: float = 20.0,
    greeting_ms: int = 1000,
    reply_ms: int = 1500,
    reply_delay_ms: int = 300,
    caller_ms_per_char: int = 60,
    echo: Callable[[str], None] = print,
) -> LoadReport:
    """`calls` concurrent calls of `turns` turns (every turn after the first a barge-in)."""
    from voice_gateway.providers.tts_fake import FakeTts

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    server = context.Process(
        target=_serve, args=(sock, greeting_ms, reply_ms, reply_delay_ms), daemon=True
    )
    server.start()
    try:
        await _wait_for(port)
        script = build_script(
            language="es", turns=turns, barge_in_at_ms=barge_in_at_ms, wait_pause_ms=300
        )
        options = LoadOptions(
            call=CallOptions(
                to_number=DEFAULT_TO, timeout_s=20, tts=FakeTts(ms_per_char=caller_ms_per_char)
            ),
            script=script,
            stagger_ms=stagger_ms,
            server_pid=server.pid,
        )
        report = await run_load(f"http://127.0.0.1:{port}", calls, turns, options=options)
    finally:
        server.terminate()
        server.join(10)
        sock.close()
    echo(f"{calls} calls x {turns} turns against a stand-in gateway (pid {server.pid})")
    for line in report.lines():
        echo(line)
    frames = max(report.frames_sent, 1)
    echo(
        f"simulator cost: {1e6 * report.simulator_cpu_s / frames:.1f} µs of CPU per caller "
        f"frame, all work included (sending, receiving, playback, marks)"
    )
    return report


async def _wait_for(port: int) -> None:
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError("the stand-in gateway did not start")


if __name__ == "__main__":
    asyncio.run(bench_simulator())
