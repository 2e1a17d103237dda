from __future__ import annotations

from agent.base import Action, ActionKind, Conversation, TextDelta, Turn
from agent.scripted import ScriptedAgent


async def _reply(
    agent: ScriptedAgent, conversation: Conversation, text: str
) -> tuple[str, list[Action]]:
    words: list[str] = []
    actions: list[Action] = []
    async for item in agent.respond(conversation, text):
        if isinstance(item, TextDelta):
            words.append(item.text)
        else:
            actions.append(item)
    return "".join(words), actions


def _conversation(language: str = "es", agent_turns: int = 1) -> Conversation:
    c = Conversation(conversation_id="c", broker_id=1, lead_id=2, language=language)
    c.turns = [Turn("agent", "hola")] * agent_turns
    return c


async def test_greeting_names_the_business_and_says_it_is_automated() -> None:
    agent = ScriptedAgent(business_name="Demo Realty S.L.")
    es = await agent.greeting(_conversation("es"))
    en = await agent.greeting(_conversation("en"))
    assert "Demo Realty S.L." in es
    assert "automático" in es
    assert "automated" in en


async def test_an_outbound_greeting_says_who_calls_why_and_how_to_stop_the_calls() -> None:
    agent = ScriptedAgent(business_name="Demo Realty S.L.")
    for language, why, stop, key in (
        ("es", "por su consulta", "no le llamemos más", "pulse el 9"),
        ("en", "calling about your enquiry", "did not call again", "press 9"),
    ):
        conversation = _conversation(language)
        conversation.direction = "outbound"
        conversation.opt_out_key = "9"
        text = await agent.greeting(conversation)
        assert text.startswith(("Hola, le llama", "Hello, this is"))
        assert "Demo Realty S.L." in text
        assert ".." not in text
        assert why in text
        assert stop in text
        assert key in text
        # Without a key to offer, the spoken opt-out stays and no key is named.
        conversation.opt_out_key = None
        without = await agent.greeting(conversation)
        assert stop in without
        assert key not in without
    # An inbound call keeps the plain greeting.
    assert "consulta" not in await agent.greeting(_conversation("es"))


async def test_asks_the_qualification_questions_in_order() -> None:
    agent = ScriptedAgent(business_name="X")
    first, _ = await _reply(agent, _conversation("es", 1), "Busco un piso")
    second, _ = await _reply(agent, _conversation("es", 2), "En Chamberí")
    assert "inmueble" in first
    assert "presupuesto" in second
    english, _ = await _reply(agent, _conversation("en", 2), "downtown")
    assert "budget" in english


async def test_do_not_call_is_honoured_with_accents_and_case() -> None:
    agent = ScriptedAgent(business_name="X")
    text, actions = await _reply(agent, _conversation(), "Por favor NO me vuelvan a llamar")
    assert "no le volveremos a llamar" in text
    assert [a.kind for a in actions] == [ActionKind.do_not_call, ActionKind.hang_up]
    _, english = await _reply(agent, _conversation("en"), "Please stop calling me")
    assert english[0].kind is ActionKind.do_not_call


async def test_transfer_only_when_a_number_is_configured() -> None:
    without = ScriptedAgent(business_name="X")
    _, none = await _reply(without, _conversation(), "quiero hablar con una persona")
    assert none == []
    with_number = ScriptedAgent(business_name="X", transfer_number="+34910000002")
    _, actions = await _reply(with_number, _conversation(), "quiero hablar con una persona")
    assert actions == [Action(ActionKind.transfer, "+34910000002")]


async def test_goodbye_hangs_up() -> None:
    agent = ScriptedAgent(business_name="X")
    text, actions = await _reply(agent, _conversation(), "Vale, adiós")
    assert "Gracias" in text
    assert actions == [Action(ActionKind.hang_up)]


async def test_streams_word_by_word() -> None:
    agent = ScriptedAgent(business_name="X")
    deltas = [d async for d in agent.respond(_conversation("en", 1), "hi")]
    assert len(deltas) > 5
    assert all(isinstance(d, TextDelta) for d in deltas)
