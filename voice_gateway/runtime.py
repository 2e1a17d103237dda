"""Everything a process needs to run calls, built once from configuration.

Provider choice is configuration (STT_PROVIDER, TTS_PROVIDER, VAD, TELEPHONY_PROVIDER),
never a code edit: this is the one place that turns those settings into objects, and
the one place a `CallSession` is assembled from them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache

from agent.config import get_settings as get_agent_settings
from agent.scripted import ScriptedAgent
from voice_gateway.admission import Admission, get_admission
from voice_gateway.audio.recorder import CallRecorder
from voice_gateway.audio.vad import make_vad
from voice_gateway.call_control import CallControl, get_call_control
from voice_gateway.config import (
    GatewaySettings,
    STTProvider,
    TelephonyProvider,
    TTSProvider,
    get_settings,
)
from voice_gateway.metrics import GatewayMetrics, get_metrics
from voice_gateway.providers.base import SpeechToText, Telephony, TextToSpeech
from voice_gateway.session import CallContext, CallSession, SessionConfig
from voice_gateway.store import CrmCallStore
from voice_gateway.turns import TurnConfig
from voice_gateway.twilio.tokens import CallTokens, get_call_tokens

log = logging.getLogger(__name__)


def build_stt(settings: GatewaySettings) -> SpeechToText:
    if settings.stt_provider is STTProvider.google:
        from voice_gateway.providers.stt_google import GoogleSpeechToText

        return GoogleSpeechToText.from_settings(settings)
    if settings.stt_provider is STTProvider.pocketsphinx:
        from voice_gateway.providers.stt_pocketsphinx import PocketSphinxSpeechToText

        return PocketSphinxSpeechToText.from_settings(settings)
    from voice_gateway.providers.stt_fake import FakeSpeechToText

    return FakeSpeechToText.from_settings(settings)


def build_tts(settings: GatewaySettings) -> TextToSpeech:
    from voice_gateway.providers.tts_cache import cached_from_settings

    inner: TextToSpeech
    if settings.tts_provider is TTSProvider.google:
        from voice_gateway.providers.tts_google import GoogleTts

        inner = GoogleTts.from_settings(settings)
    elif settings.tts_provider is TTSProvider.espeak:
        from voice_gateway.providers.tts_espeak import EspeakTts

        inner = EspeakTts.from_settings(settings)
    else:
        from voice_gateway.providers.tts_fake import FakeTts

        inner = FakeTts.from_settings(settings)
    return cached_from_settings(inner, settings)


def build_telephony(settings: GatewaySettings) -> Telephony:
    if settings.telephony_provider is TelephonyProvider.twilio:
        from voice_gateway.providers.telephony_twilio import TwilioTelephony

        return TwilioTelephony.from_settings(settings)
    from voice_gateway.providers.telephony_fake import FakeTelephony

    return FakeTelephony()


@dataclass
class VoiceRuntime:
    settings: GatewaySettings
    stt: SpeechToText
    tts: TextToSpeech
    telephony: Telephony
    admission: Admission
    tokens: CallTokens
    metrics: GatewayMetrics
    #: Where AMD verdicts reach outbound calls' sessions (Redis, or in-process).
    control: CallControl = field(default_factory=get_call_control)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> VoiceRuntime:
        return cls(
            settings=settings,
            stt=build_stt(settings),
            tts=build_tts(settings),
            telephony=build_telephony(settings),
            admission=get_admission(),
            tokens=get_call_tokens(),
            metrics=get_metrics(),
        )

    def session_config(self) -> SessionConfig:
        """The per-call knobs an operator sets: turn-taking, how long Twilio may go quiet,
        and how long the caller may wait in silence for the agent's first word."""
        first_token_s = get_agent_settings().llm_first_token_timeout_s
        return SessionConfig(
            turn=TurnConfig.from_settings(self.settings),
            inbound_timeout_ms=self.settings.media_timeout_ms,
            agent_first_token_timeout_ms=max(1, round(first_token_s * 1000)),
            amd_mode=self.settings.amd_mode,
        )

    def new_session(
        self,
        *,
        call_id: int,
        call_sid: str,
        stream_sid: str,
        broker_id: int,
        lead_id: int | None,
        language: str,
        business_name: str,
        send: Callable[[str], Awaitable[None]],
        outbound_from: str | None = None,
    ) -> CallSession:
        """`outbound_from`: the number an outbound call came from (the voicemail's callback
        number); such a call also listens on its control channel for the AMD verdict."""
        agent_settings = get_agent_settings()
        agent = ScriptedAgent(
            business_name=business_name,
            first_token_latency_s=agent_settings.fake_llm_latency_ms / 1000,
            token_interval_s=agent_settings.fake_llm_token_interval_ms / 1000,
            transfer_number=self.settings.transfer_number,
        )
        recording = self.settings.resolved_recordings_dir / str(broker_id) / f"call-{call_id}.wav"
        return CallSession(
            context=CallContext(
                call_id=call_id,
                call_sid=call_sid,
                stream_sid=stream_sid,
                broker_id=broker_id,
                lead_id=lead_id,
                language=language,
                transfer_number=self.settings.transfer_number,
                business_name=business_name,
                callback_number=outbound_from,
                outbound=outbound_from is not None,
            ),
            send=send,
            agent=agent,
            stt=self.stt,
            tts=self.tts,
            telephony=self.telephony,
            vad=make_vad(self.settings.vad.value),
            store=CrmCallStore(call_id=call_id, broker_id=broker_id, recording=recording),
            recorder=CallRecorder(recording),
            metrics=self.metrics,
            config=self.session_config(),
            control=self.control if outbound_from is not None else None,
        )


@lru_cache
def get_runtime() -> VoiceRuntime:
    return VoiceRuntime.from_settings(get_settings())
