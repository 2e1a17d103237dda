"""The README's first command: a whole simulated call with no services and no network."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import wave
from pathlib import Path

import pytest


@pytest.mark.timeout(240)
def test_demo_runs_a_whole_call_on_sqlite_and_stores_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env["DATA_DIR"] = str(tmp_path)
    env["ENVIRONMENT"] = "development"
    result = subprocess.run(
        [sys.executable, "-m", "voice_gateway.cli", "demo", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "What the CRM stored" in out
    assert "automated assistant of Demo Realty S.L." in out

    db = sqlite3.connect(tmp_path / "voiceagent.sqlite3")
    status, reason, recording = db.execute(
        "SELECT status, end_reason, recording_path FROM call ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert status == "completed"
    assert reason == "caller_hung_up"
    roles = [r for (r,) in db.execute("SELECT role FROM call_turn ORDER BY seq")]
    assert roles[0] == "agent"
    assert roles.count("caller") == 3
    assert roles.count("agent") >= 3
    latencies = [
        lat for (lat,) in db.execute("SELECT latency FROM call_turn WHERE role='agent'") if lat
    ]
    assert len(latencies) >= 2
    with wave.open(recording) as wav:
        assert wav.getnchannels() == 2
        assert wav.getframerate() == 8000
        assert wav.getnframes() > 8000 * 15
