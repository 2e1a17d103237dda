"""A small scripted agent: the brain the voice gateway runs on until the ReAct agent lands.

It is deterministic and fast, so tests and the load benchmark measure the gateway, not
a model: it greets (naming the business and saying it is an automated assistant, as
the rules for artificial voices require), walks through the qualification questions in
the lead's language, and recognises the few requests every call must honour — stop
calling me, let me talk to a person, goodbye. It streams its replies word by word, with
a configurable first-token latency and pace, like an LLM would.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.base import Action, ActionKind, AgentOutput, Conversation, TextDelta

_QUESTIONS = {
    "es": [
        "¿Qué tipo de inmueble busca y en qué zona?",
        "¿Cuál es su presupuesto aproximado?",
        "¿Para cuándo le gustaría mudarse, y cómo piensa financiarlo?",
        "Perfecto, con esto un asesor le preparará opciones. ¿Quiere que agendemos una visita?",
    ],
    "en": [
        "What kind of property are you looking for, and in which area?",
        "What is your approximate budget?",
        "When would you like to move, and how do you plan to finance it?",
        "Great, an agent will prepare some options for you. Shall we book a visit?",
    ],
}
_GREETING = {
    "es": "Hola, le llama el asistente automático de {business}. ¿En qué le puedo ayudar?",
    "en": "Hello, this is the automated assistant of {business}. How can I help you?",
}
#: An outbound call says who calls, why, and how to stop the calls, before anything else.
_OUTBOUND_GREETING = {
    "es": "Hola, le llama el asistente automático de {business} por su consulta sobre una "
    "vivienda. Si prefiere que no le llamemos más, dígamelo{key}. ¿Tiene un momento?",
    "en": "Hello, this is the automated assistant of {business}, calling about your "
    "enquiry on a property. If you would rather we did not call again, just tell me{key}. "
    "Do you have a moment?",
}
_OPT_OUT_KEY = {"es": " o pulse el {key}", "en": " or press {key}"}
_GOODBYE = {
    "es": "Gracias por su tiempo. ¡Que tenga un buen día!",
    "en": "Thank you for your time. Have a great day!",
}
_DNC = {
    "es": "Entendido, no le volveremos a llamar. Disculpe las molestias. Adiós.",
    "en": "Understood, we will not call you again. Sorry for the trouble. Goodbye.",
}
_TRANSFER = {
    "es": "Claro, le paso con un asesor. Un momento, por favor.",
    "en": "Of course, I'll put you through to an agent. One moment, please.",
}
_CLOSING = {
    "es": "Muy bien. Un asesor le contactará pronto. ¿Algo más en lo que le pueda ayudar?",
    "en": "All right. An agent will contact you soon. Anything else I can help you with?",
}

_DNC_PATTERNS = (
    r"\bno me llame[ns]?\b",
    r"\bno me vuelva[ns]? a llamar\b",
    r"\bno (me )?llamen mas\b",
    r"\bno (quiero|deseo) (que me llamen|mas llamadas|recibir llamadas)\b",
    r"\bdon'?t call\b",
    r"\bdo not call\b",
    r"\bstop calling\b",
    r"\bremove me\b",
)
_HUMAN_PATTERNS = (
    r"\b(una )?persona\b",
    r"\b(un )?asesor\b",
    r"\bagente humano\b",
    r"\bhuman\b",
    r"\b(real )?person\b",
    r"\brepresentative\b",
)
_BYE_PATTERNS = (r"\badios\b", r"\bhasta luego\b", r"\bbye\b", r"\bgoodbye\b", r"\bnada mas\b")


def _normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in folded if not unicodedata.combining(c))


def _matches(text: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(p, text) for p in patterns)


@dataclass
class ScriptedAgent:
    business_name: str
    first_token_latency_s: float = 0.0
    token_interval_s: float = 0.0
    transfer_number: str | None = None

    async def greeting(self, conversation: Conversation) -> str:
        lang = _lang(conversation.language)
        if conversation.direction == "outbound":
            key = conversation.opt_out_key
            offer = _OPT_OUT_KEY[lang].format(key=key) if key else ""
            text = _OUTBOUND_GREETING[lang].format(business=self.business_name, key=offer)
        else:
            text = _GREETING[lang].format(business=self.business_name)
        # "Demo Realty S.L." already ends its sentence; don't say "S.L.." twice.
        return text.replace("..", ".")

    async def respond(self, conversation: Conversation, text: str) -> AsyncIterator[AgentOutput]:
        lang = _lang(conversation.language)
        said = _normalise(text)
        if _matches(said, _DNC_PATTERNS):
            async for delta in self._stream(_DNC[lang]):
                yield delta
            yield Action(ActionKind.do_not_call, argument=text)
            yield Action(ActionKind.hang_up)
            return
        if self.transfer_number and _matches(said, _HUMAN_PATTERNS):
            async for delta in self._stream(_TRANSFER[lang]):
                yield delta
            yield Action(ActionKind.transfer, argument=self.transfer_number)
            return
        if _matches(said, _BYE_PATTERNS):
            async for delta in self._stream(_GOODBYE[lang]):
                yield delta
            yield Action(ActionKind.hang_up)
            return
        asked = sum(1 for t in conversation.turns if t.role == "agent") - 1  # minus greeting
        questions = _QUESTIONS[lang]
        reply = questions[asked] if 0 <= asked < len(questions) else _CLOSING[lang]
        async for delta in self._stream(reply):
            yield delta

    async def _stream(self, reply: str) -> AsyncIterator[TextDelta]:
        if self.first_token_latency_s:
            await asyncio.sleep(self.first_token_latency_s)
        words = reply.split(" ")
        for i, word in enumerate(words):
            if i and self.token_interval_s:
                await asyncio.sleep(self.token_interval_s)
            yield TextDelta(word if i == 0 else " " + word)


def _lang(language: str) -> str:
    return "en" if language.startswith("en") else "es"
