"""Listener registration: an XSD per payload class, a valid example, agents' usage instructions."""

from lxml import etree

from agentserver.message_bus.listeners import RESPONSE_RULES, example_of
from agentserver.xmlsafe import SafeXml
from tests.organisms import PROBE, Job, Task, Typed
from tests.support import HANG_GUARD, listener, organism, pump_for

TEAM = [
    listener("boss", "Task", "remember", agent=True, peers=["worker", "typed"], description="Plans the work."),
    listener("worker", "Job", "worker", description="Does one job."),
    listener("typed", "Typed", "typed_echo", description="Echoes typed values."),
]


def test_each_listener_gets_a_compiled_xsd_of_its_payload_class():
    routes = pump_for(*TEAM).routes
    for name, cls in (("boss", Task), ("worker", Job), ("typed", Typed)):
        registered = routes.by_name[name]
        assert registered.payload_type.cls is cls and registered.root_tag == cls.__name__
        xsd = etree.fromstring(registered.payload_type.xsd_text.encode())
        assert xsd.tag == "{http://www.w3.org/2001/XMLSchema}schema"
        assert xsd.find("{http://www.w3.org/2001/XMLSchema}element").get("name") == cls.__name__
        assert isinstance(registered.payload_type.schema, etree.XMLSchema)
    assert [listener.name for listener in routes.by_tag["Job"]] == ["worker"]


def test_the_example_instance_is_valid_against_the_generated_xsd():
    routes = pump_for(*TEAM).routes
    xml = SafeXml()
    for registered in routes.by_name.values():
        if registered.system:
            continue
        cls = registered.payload_type.cls
        example = xml.fragment(registered.example_xml)[0]
        assert registered.payload_type.schema.validate(example), (registered.name, registered.payload_type.schema.error_log)
        assert cls.parse(example) == example_of(cls)  # and it reads back as the example


def test_an_agents_usage_instructions_name_its_peers_with_their_schemas_and_the_rules():
    routes = pump_for(*TEAM).routes
    text = routes.by_name["boss"].usage_instructions
    assert "You are the agent 'boss'." in text and "Plans the work." in text
    for peer in ("worker", "typed"):
        registered = routes.by_name[peer]
        assert f"## {peer}" in text and registered.description in text
        assert f"Send it a <{registered.root_tag}> payload." in text
        assert registered.payload_type.xsd_text.strip() in text
        assert registered.example_xml.strip() in text
    assert RESPONSE_RULES in text
    # plain listeners get none
    assert routes.by_name["worker"].usage_instructions == ""


def test_concurrency_defaults_and_peers():
    routes = pump_for(*TEAM, listener("capped", "Typed", "typed_echo", concurrency=2), max_concurrent_per_agent=3, max_concurrent_handlers=7).routes
    assert routes.by_name["boss"].concurrency == 3 and routes.by_name["worker"].concurrency == 7
    assert routes.by_name["capped"].concurrency == 2
    assert routes.by_name["boss"].peers == frozenset({"worker", "typed"}) and routes.by_name["worker"].peers is None
    assert routes.by_name["system.boot"].system


async def test_an_agent_receives_its_usage_instructions_and_name_at_run_time(start):
    pump = await start(organism(*TEAM))
    async with pump.client("tester") as client:
        await client.ask(Task(goal="x"), to="boss", timeout=HANG_GUARD)
        await client.ask(Job(token="y"), to="worker", timeout=HANG_GUARD)
    (boss,) = PROBE.of("remember")
    assert boss.meta.usage_instructions == pump.routes.by_name["boss"].usage_instructions
    assert (boss.meta.own_name, boss.meta.from_id, boss.meta.is_self_call) == ("boss", "tester", False)
    (worker,) = PROBE.of("worker")
    assert (worker.meta.own_name, worker.meta.usage_instructions, worker.meta.todo_nudge) == (None, "", "")


def test_declared_empty_peers_mean_respond_only_even_for_a_plain_listener():
    routes = pump_for(*TEAM, listener("mute", "Typed", "typed_echo", peers=[])).routes
    mute = routes.by_name["mute"]
    assert mute.peers == frozenset()
    assert not mute.may_send_to("worker") and mute.may_send_to("mute")
    assert routes.by_name["worker"].may_send_to("typed")  # no peers declared: anywhere
