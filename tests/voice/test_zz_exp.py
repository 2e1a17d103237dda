import logging
from pathlib import Path
import pytest
from tests.voice.gateway_server import running_gateway, make_line, ended_call, turns_of
from voice_gateway.simulator import run_call, parse_script

async def test_exp(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    line = make_line()
    with running_gateway(tmp_path) as gw:
        script = parse_script("wait 300\nsay Busco un piso en Chamberí.\nwait 300\nsay Mi presupuesto es de trescientos mil euros.\nwait 300\nhang-up")
        lines = []
        res = await run_call(gw.base_url, script, options=gw.options(to_number=line.number, from_number=line.caller, echo=lines.append))
        print("\n".join(lines))
        print(res)
        call = await ended_call(res.call_sid)
        print(call.status, call.end_reason, call.recording_path)
        for t in turns_of(call.id):
            print(t.seq, t.role, t.text, t.start_ms, t.end_ms, t.interrupted, t.latency)
    for r in caplog.records:
        if r.name.startswith("voice_gateway"):
            print(r.levelname, r.name, r.getMessage())
