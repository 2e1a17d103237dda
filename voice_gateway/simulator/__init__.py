"""The call simulator: the project's own Twilio stand-in and load generator.

`run_call` phones the gateway once as Twilio would (signed webhook, media stream paced
in real time, the agent's audio played back with marks and `clear` obeyed) and measures
response and barge-in latency; `run_load` runs N such calls at once and reports
percentiles, errors and CPU. `voiceagent simulate-call` is the command-line front.

Modules: `script` (what the caller does), `audio_source` (the caller's voice, ready to
send), `playback` (Twilio's playback buffer, pure), `dial` (webhook and TwiML), `ticker`
(the shared 20 ms beat), `caller` (one call), `load` (many calls, statistics), `bench`
(what the simulator itself costs at 200 calls).
"""

from voice_gateway.simulator.audio_source import AudioSourceError, UtteranceCache
from voice_gateway.simulator.caller import (
    CallError,
    CallOptions,
    CallResult,
    EndedBy,
    ErrorKind,
    run_call,
)
from voice_gateway.simulator.dial import DialError
from voice_gateway.simulator.load import LoadOptions, LoadReport, Percentiles, run_load
from voice_gateway.simulator.script import (
    BargeIn,
    Dtmf,
    HangUp,
    Pause,
    Say,
    Script,
    ScriptError,
    TimedDtmf,
    Utterance,
    WaitForAgent,
    build_script,
    load_script,
    parse_script,
)

__all__ = [
    "AudioSourceError",
    "BargeIn",
    "CallError",
    "CallOptions",
    "CallResult",
    "DialError",
    "Dtmf",
    "EndedBy",
    "ErrorKind",
    "HangUp",
    "LoadOptions",
    "LoadReport",
    "Pause",
    "Percentiles",
    "Say",
    "Script",
    "ScriptError",
    "TimedDtmf",
    "Utterance",
    "UtteranceCache",
    "WaitForAgent",
    "build_script",
    "load_script",
    "parse_script",
    "run_call",
    "run_load",
]
