"""`voiceagent serve` builds its app with the process tuned for live calls.

Checked in a child process: freezing the heap and changing the switch interval are
process-wide, and the test process must keep its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import gc, json, sys
from voice_gateway.app import create_served_app
before = gc.get_freeze_count()
app = create_served_app()
print(json.dumps({
    "routes": len(app.routes),
    "frozen_before": before,
    "frozen_after": gc.get_freeze_count(),
    "switch_interval": sys.getswitchinterval(),
}))
"""


def test_the_served_app_is_frozen_and_switches_threads_every_millisecond() -> None:
    done = subprocess.run(  # noqa: S603 - our own interpreter and probe
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["routes"] > 10  # the whole app: API, webhooks, media socket, metrics
    assert probe["frozen_before"] == 0
    # Every object alive once the app is built is out of the collector's reach.
    assert probe["frozen_after"] > 50_000
    assert probe["switch_interval"] == 0.001
