"""LLM agents declared in YAML (DESIGN.md §12): the built-in agent loop against a fake
OpenAI server (real HTTP on loopback), and the replay provider driving
config/llm-organism.yaml. What the model was sent is asserted from the server's
record of each request."""

import asyncio
from pathlib import Path

import pytest

from agentserver import RemoteError, bootstrap
from agentserver.codes import ErrorCode
from agentserver.config import ConfigError, load_config
from agentserver.examples.planner import Add, Sum, Summary, Task
from agentserver.llm.agent import MAX_MODEL_CALLS, Unusable, read_answer
from agentserver.llm.grammar import grammar_for
from agentserver.message_bus.boot import organism_routes
from tests.agent_organisms import PLANNER_PROMPT, planner_organism
from tests.fake_llm import Answer, Stream, openai_server  # noqa: F401 - a fixture
from tests.support import HANG_GUARD

ROOT = Path(__file__).resolve().parent.parent
ADD = "<Add><A>2</A><B>3</B></Add>"
SUMMARY = "<Summary><Text>2 + 3 = 5</Text><Total>5</Total></Summary>"


def messages(server, n: int) -> list[dict]:
    """The chat the model was sent in request `n`."""
    return server.seen[n].body["messages"]


async def ask_planner(pump, text: str = "What is 2 + 3?", **options):
    async with pump.client("tester") as client:
        return await client.ask(Task(text=text), to="planner", timeout=HANG_GUARD, **options)


# ------------------------------------------------------------------ the round trip
async def test_the_planner_calls_the_calculator_and_answers_with_a_summary(start, openai_server):
    openai_server.add(Answer(f"I will add them first.\n```xml\n{ADD}\n```"), Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url))
    reply = await ask_planner(pump)

    assert reply.payload == Summary(text="2 + 3 = 5", total=5)
    assert len(openai_server.seen) == 2
    first, second = messages(openai_server, 0), messages(openai_server, 1)
    system = first[0]
    assert system["role"] == "system" and system["content"].startswith(PLANNER_PROMPT)
    assert '<xs:element name="A" type="xs:integer"/>' in system["content"]  # the peer's schema
    assert "## calculator\nAdds two numbers." in system["content"]  # its description
    assert '<xs:element name="Total" type="xs:integer"/>' in system["content"]  # the reply's schema
    assert "exactly one <Summary> element" in system["content"]  # the rules, in XML terms
    assert "greeter" not in system["content"]  # not a peer: not shown
    assert first[1:] == [{"role": "user", "content": "<Task><Text>What is 2 + 3?</Text></Task>"}]
    assert second[:2] == first
    assert second[2]["role"] == "assistant" and ADD in second[2]["content"]
    assert second[3] == {"role": "user", "content": "<Sum><Value>5</Value></Sum>"}  # the peer's answer
    body = openai_server.seen[0].body
    assert body["model"] == "m" and body["max_tokens"] == 64 and "grammar" not in body
    assert pump.counters.listener("calculator").handled == 1
    llm = pump.status()["llm"]["agents"]["planner"]
    assert llm["requests"] == 2 and llm["prompt_tokens"] == 22


async def test_several_calls_in_one_answer_run_concurrently_and_come_back_in_order(start, openai_server):
    openai_server.add(Answer("<Add><A>1</A><B>2</B></Add>\n<Add><A>30</A><B>4</B></Add>"), Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url))
    await ask_planner(pump)
    assert messages(openai_server, 1)[-1] == {"role": "user",
                                             "content": "<Sum><Value>3</Value></Sum>\n<Sum><Value>34</Value></Sum>"}
    assert pump.counters.listener("calculator").handled == 2


async def test_a_failed_call_comes_back_as_a_system_error_turn(start, openai_server):
    openai_server.add(Answer("<Breakable><Why>test</Why></Breakable>"), Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url, peers=("calculator", "breaker")))
    reply = await ask_planner(pump)
    assert reply.payload.total == 5
    turn = messages(openai_server, 1)[-1]
    assert turn["role"] == "user" and turn["content"].startswith("<SystemError><Code>handler</Code>")
    assert "<Peer>breaker</Peer>" in turn["content"] and "<CallId>" in turn["content"]
    assert "broken on purpose" not in turn["content"]  # canned text only, as for any caller


# ------------------------------------------------------------------ re-asks
@pytest.mark.parametrize("bad, problem", [
    ("<Add><A>2</A><B>3</B>", "it is not well-formed XML"),
    ("Sure! I will add 2 and 3.", "it has no XML payload element."),
    ("<Multiply><A>2</A><B>3</B></Multiply>", "<Multiply> is not a payload anyone here accepts."),
    ("<Add><A>two</A><B>3</B></Add>", "<Add> does not match its schema: Element 'A': 'two' is not a valid value"),
    ("<Greeting><Name>Ada</Name></Greeting>", "<Greeting> is accepted by greeter, which you may not call"),
    (f"{ADD}{SUMMARY}", "it both calls peers and answers with <Summary>."),
    (f"{SUMMARY}{SUMMARY}", "it has 2 <Summary> elements; answer with exactly one."),
])
async def test_an_unusable_answer_is_re_asked_with_what_was_wrong(start, openai_server, bad, problem):
    openai_server.add(Answer(bad), Answer(ADD), Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url))
    pump.routes.bind_llm(pump.handlers.llm)  # as the pump does once it wires the router to its routes
    reply = await ask_planner(pump)

    assert reply.payload.total == 5
    second = messages(openai_server, 1)
    assert second[-2] == {"role": "assistant", "content": bad}
    reask = second[-1]
    assert reask["role"] == "user" and reask["content"].startswith("Your last message could not be used: ")
    assert problem in reask["content"]
    assert "<Summary>" in reask["content"]  # what it may answer with
    assert len(openai_server.seen) == 3
    assert pump.status()["llm"]["agents"]["planner"]["reasks"] == 1
    assert pump.counters.listener("calculator").handled == 1


async def test_after_max_reasks_the_caller_hears_llm_invalid(start, openai_server):
    openai_server.add(Answer("no XML"), Answer("<Add>"), Answer("still <nothing"), Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url, llm={"max_reasks": 2}))
    with pytest.raises(RemoteError) as failed:
        await ask_planner(pump)
    assert failed.value.code == "llm-invalid"
    assert len(openai_server.seen) == 3  # the first answer and two re-asks; no fourth request
    assert pump.counters.errored[ErrorCode.LLM_INVALID] == 1


async def test_max_reasks_counts_per_turn(start, openai_server):
    # one bad answer before the call and one after it: each turn has its own re-ask
    openai_server.add(Answer("?"), Answer(ADD), Answer("?"), Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url, llm={"max_reasks": 1}))
    reply = await ask_planner(pump)
    assert reply.payload.total == 5 and len(openai_server.seen) == 4


async def test_model_calls_per_message_are_bounded(start, openai_server):
    openai_server.add(*[Answer(ADD) for _ in range(MAX_MODEL_CALLS + 1)])
    pump = await start(planner_organism(openai_server.base_url))
    with pytest.raises(RemoteError) as failed:
        await ask_planner(pump)
    assert failed.value.code == "llm-invalid"
    assert len(openai_server.seen) == MAX_MODEL_CALLS
    assert pump.counters.listener("calculator").handled == MAX_MODEL_CALLS


# ------------------------------------------------------------------ budgets
async def test_a_budget_spent_mid_conversation_ends_it_with_budget(start, openai_server):
    # the first turn costs 9000 tokens; the second cannot fit in 5000
    openai_server.add(Answer(ADD, prompt_tokens=9000), Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url, llm={"budget": {"tokens_per_conversation": 5000}}))
    with pytest.raises(RemoteError) as failed:
        await ask_planner(pump)
    assert failed.value.code == "budget"
    assert len(openai_server.seen) == 1  # refused before sending
    assert pump.counters.listener("calculator").handled == 1  # the call was made: mid-conversation
    assert pump.status()["llm"]["agents"]["planner"]["budget_refusals"] == 1


# ------------------------------------------------------------------ streaming
async def test_a_client_that_asks_sees_the_tokens_before_the_reply(start, openai_server):
    openai_server.add(Stream(["<Add><A>2</A>", "<B>3</B></Add>"]),
                      Stream(["<Summary><Text>2 + 3", " = 5</Text>", "<Total>5</Total></Summary>"], pause_after=1))
    pump = await start(planner_organism(openai_server.base_url))
    pieces: list[str] = []
    asking = asyncio.create_task(ask_planner(pump, on_token=pieces.append))
    await asyncio.wait_for(openai_server.paused.wait(), HANG_GUARD)
    while "<Summary><Text>2 + 3" not in pieces:
        await asyncio.sleep(0.005)
    assert not asking.done()
    openai_server.release.set()
    reply = await asyncio.wait_for(asking, HANG_GUARD)

    assert reply.payload == Summary(text="2 + 3 = 5", total=5)
    assert pieces == ["<Add><A>2</A>", "<B>3</B></Add>", "\n", "<Summary><Text>2 + 3", " = 5</Text>",
                      "<Total>5</Total></Summary>"]
    assert all(seen.body["stream"] is True for seen in openai_server.seen)


async def test_streamed_text_is_still_validated_after_the_stream(start, openai_server):
    openai_server.add(Stream(["<Summary><Text>x</Text>", "<Total>five</Total></Summary>"]), Stream([SUMMARY]))
    pump = await start(planner_organism(openai_server.base_url))
    pieces: list[str] = []
    reply = await ask_planner(pump, on_token=pieces.append)
    assert reply.payload.total == 5
    assert "does not match its schema" in messages(openai_server, 1)[-1]["content"]
    assert pieces[:2] == ["<Summary><Text>x</Text>", "<Total>five</Total></Summary>"]


async def test_without_a_streaming_client_nothing_streams(start, openai_server):
    openai_server.add(Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url))
    await ask_planner(pump)
    assert "stream" not in openai_server.seen[0].body


# ------------------------------------------------------------------ grammar
async def test_a_grammar_backend_is_sent_the_grammar_of_the_agents_payloads(start, openai_server):
    openai_server.add(Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url, grammar=True))
    await ask_planner(pump)
    assert openai_server.seen[0].body["grammar"] == grammar_for([Add], reply=Summary)


# ------------------------------------------------------------------ the example, offline
async def test_the_replay_provider_drives_the_example_organism(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # .env is read from the working directory: none here
    async with bootstrap(ROOT / "config" / "llm-organism.yaml") as pump:
        async with pump.client("tester") as client:
            reply = await client.ask(Task(text="What is 2 + 3?"), to="planner", timeout=HANG_GUARD)
        await asyncio.wait_for(pump.idle(), HANG_GUARD)
        status = pump.status()
    assert reply.payload == Summary(text="2 + 3 = 5", total=5)
    assert pump.counters.listener("calculator").handled == 1
    assert status["llm"]["backends"]["script"]["requests"] == 2
    assert pump.counters.errored_total == 0


# ------------------------------------------------------------------ registration
def test_an_llm_agent_is_an_agent_with_its_reply_in_its_usage_instructions(openai_server):
    routes = organism_routes(load_config("o.yaml", text=planner_organism(openai_server.base_url)))
    planner = routes.by_name["planner"]
    assert planner.agent and planner.peers == frozenset({"calculator"})
    assert "## Your answer\nAnswer your caller with a <Summary> payload." in planner.usage_instructions
    assert "<Summary>\n  <Text>text</Text>\n  <Total>1</Total>\n</Summary>" in planner.usage_instructions
    assert "TodoUntil" not in planner.usage_instructions  # the loop's rules, not a handler's
    assert routes.payload_types.get("Summary") is not None  # replies are validated on their way out


def test_a_peer_accepting_the_reply_class_is_a_config_error(openai_server):
    text = planner_organism(openai_server.base_url, reply_class="agentserver.examples.planner.Add")
    with pytest.raises(ConfigError) as problems:
        organism_routes(load_config("o.yaml", text=text))
    (problem,) = problems.value.problems
    assert problem.startswith("o.yaml:") and "peer 'calculator' accepts <Add>, the root tag of its reply_class" \
        in problem


# ------------------------------------------------------------------ reading answers (pure)
@pytest.fixture(scope="module")
def loop():
    text = planner_organism("http://127.0.0.1:9/v1")
    return organism_routes(load_config("o.yaml", text=text)).by_name["planner"].handler


def read(loop, text: str):
    return read_answer(text, xml=loop.xml, calls=loop.calls, reply=loop.reply, listeners_of=loop.listeners_of)


def test_text_around_and_between_elements_is_ignored(loop):
    answer = read(loop, "First:\n<Add><A>1</A><B>2</B></Add> and then\n<Add><A>3</A><B>4</B></Add>\nDone.")
    assert answer.calls == (("calculator", Add(a=1, b=2)), ("calculator", Add(a=3, b=4)))
    assert answer.reply is None
    assert read(loop, f"```xml\n{SUMMARY}\n```").reply == Summary(text="2 + 3 = 5", total=5)


@pytest.mark.parametrize("text, problem", [
    ('<Add><A>1</A><B>2</B></Add><!DOCTYPE x [<!ENTITY a "b">]><Add><A>&a;</A><B>2</B></Add>', "it was refused: DTDs"),
    ("<Add><A>1</A><B>2</B></Add>" * 9, "it has 9 payload elements; write at most 8"),
    ('<Add xmlns="urn:x"><A>1</A><B>2</B></Add>', "<Add> is in a namespace"),
    ('<Add extra="1"><A>1</A><B>2</B></Add>', "does not match its schema"),
    ("<Sum><Value>1</Value></Sum>", "<Sum> is not a payload anyone here accepts"),
    ("<Summary><Text>a</Text><Total>1</Total></Summary></answer><answer>", "not well-formed"),
    ("a < b and c > d", "no XML payload element"),
])
def test_unusable_answers(loop, text, problem):
    with pytest.raises(Unusable) as unusable:
        read(loop, text)
    assert problem in str(unusable.value)


def test_a_dtd_before_the_elements_is_text_around_them_never_parsed(loop):
    answer = read(loop, '<!DOCTYPE x [<!ENTITY a "b">]><Add><A>1</A><B>2</B></Add>')
    assert answer.calls == (("calculator", Add(a=1, b=2)),)
    with pytest.raises(Unusable, match="not well-formed"):
        read(loop, '<!DOCTYPE x [<!ENTITY a "1">]><Add><A>&a;</A><B>2</B></Add>')  # its entity means nothing


def test_escaped_text_reads_back_as_text(loop):
    answer = read(loop, "<Summary><Text>a &lt;b&gt; &amp; &quot;c&quot;</Text><Total>-7</Total></Summary>")
    assert answer.reply == Summary(text='a <b> & "c"', total=-7)


def test_a_peer_answer_is_rendered_as_its_xml(loop):
    assert loop._xml_of(Sum(value=5)) == "<Sum><Value>5</Value></Sum>"


def test_the_history_is_the_agents_thread_as_turns_up_to_this_message(loop):
    from agentserver.message_bus.message_state import HandlerMetadata, HistoryEntry

    history = (HistoryEntry("tester", "planner", "Task", Task(text="first"), message_id="m0"),
               HistoryEntry("calculator", "planner", "Sum", Sum(value=3), message_id="m1"),
               HistoryEntry("planner", "planner", "Add", Add(a=1, b=2), message_id="m2"),
               HistoryEntry("tester", "planner", "Task", Task(text="now"), message_id="m3"),
               HistoryEntry("calculator", "planner", "Sum", Sum(value=9), message_id="m4"))  # after this message
    meta = HandlerMetadata(thread_id="t", from_id="tester", history=history, message_id="m3")
    assert loop._history(Task(text="now"), meta) == [
        {"role": "user", "content": "<Task><Text>first</Text></Task>"},
        {"role": "user", "content": "<Sum><Value>3</Value></Sum>"},
        {"role": "assistant", "content": "<Add><A>1</A><B>2</B></Add>"},
        {"role": "user", "content": "<Task><Text>now</Text></Task>"},
    ]


async def test_an_agent_without_peers_is_told_to_answer_only(start, openai_server):
    openai_server.add(Answer(ADD), Answer(SUMMARY))
    pump = await start(planner_organism(openai_server.base_url, peers=()))
    reply = await ask_planner(pump)
    assert reply.payload.total == 5
    system, reask = messages(openai_server, 1)[0]["content"], messages(openai_server, 1)[-1]["content"]
    assert "You have no peers" in system and "To call a peer" not in system
    assert "<Add> is accepted by calculator, which you may not call" in reask
    assert reask.endswith("Write it again, as XML only: answer your caller with one <Summary> element.")
    assert pump.counters.listener("calculator").handled == 0


async def test_the_example_file_works_against_a_server_named_in_dotenv(tmp_path, monkeypatch, openai_server):
    """config/llm-organism.yaml with its commented OpenAI-compatible backend in place of
    the replay one: the server's URL and key come from .env, not from the file."""
    text = (ROOT / "config" / "llm-organism.yaml").read_text()
    lines = ("- name: server", "provider: openai", "base_url_env: LLM_BASE_URL", "api_key_env: OPENAI_API_KEY",
             "models: [gpt-4o-mini]")
    for line in lines:  # the file's comment shows exactly this backend
        assert f"#     {'  ' if not line.startswith('-') else ''}{line}" in text, line
    backend = "".join(f"    {'  ' if not line.startswith('-') else ''}{line}\n" for line in lines)
    replay = text[text.index("    - name: script"):text.index("listeners:")]
    config = text.replace(replay, backend + "\n")
    (tmp_path / "organism.yaml").write_text(config)
    (tmp_path / ".env").write_text(f"LLM_BASE_URL={openai_server.base_url}\nOPENAI_API_KEY=k-from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLM_BASE_URL", raising=False)
    openai_server.add(Answer(ADD), Answer(SUMMARY))
    async with bootstrap("organism.yaml") as pump:
        reply = await ask_planner(pump)
    assert reply.payload == Summary(text="2 + 3 = 5", total=5)
    assert openai_server.seen[0].headers.get("authorization") == "Bearer k-from-dotenv"
