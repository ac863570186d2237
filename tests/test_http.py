"""organism.http (DESIGN §13): the config key, /metrics, /healthz, /status, /events and the page.

A real aiohttp server on 127.0.0.1 (a free port), fetched with httpx."""

import asyncio
import json
import socket

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agentserver import load_config
from agentserver.config import ConfigError
from agentserver.web import HttpServer
from tests.organisms import Echo, Order
from tests.support import HANG_GUARD, envelope, listener, organism, settle

ECHO = listener("echo", "Echo", "echo")
RELAY = listener("relay", "Order", "relay", peers=["echo"])


# ---------------------------------------------------------------------- the config key
def _config(http: object):
    return load_config("organism.yaml", text=f"organism:\n  name: t\n  http: {http!r}\nlisteners: []\n")


@pytest.mark.parametrize("address", ["127.0.0.1:9100", "localhost:9100", "[::1]:9100", "127.0.0.1:0"])
def test_organism_http_takes_a_loopback_address(address):
    assert _config(address).http == address


def test_organism_http_is_off_unless_set():
    assert load_config("o.yaml", text="organism:\n  name: t\nlisteners: []\n").http is None


@pytest.mark.parametrize("address", ["0.0.0.0:9100", "10.1.2.3:9100", "example.com:80", "[::]:9100"])
def test_a_non_loopback_http_address_is_a_config_error_with_its_line(address):
    with pytest.raises(ConfigError) as caught:
        _config(address)
    (problem,) = caught.value.problems
    assert problem.startswith("organism.yaml:3: organism.http must be a loopback address"), problem
    assert "no TLS" in problem


@pytest.mark.parametrize("address", ["9100", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_malformed_http_address_is_a_config_error(address):
    with pytest.raises(ConfigError) as caught:
        _config(address)
    (problem,) = caught.value.problems
    assert problem.startswith("organism.yaml:3: organism.http must be"), problem


# ---------------------------------------------------------------------- the server
@pytest.fixture
async def served(start):
    """A pump with an echo and a relay, its HTTP server on a free port, and an httpx client."""
    pump = await start(with_http(organism(ECHO, RELAY)))
    async with HttpServer(pump, pump.config.http) as http, httpx.AsyncClient(base_url=http.url, timeout=HANG_GUARD) as web:
        yield pump, http, web


def with_http(text: str, address: str = "127.0.0.1:0") -> str:
    """An organism's YAML with `organism.http` set."""
    document = yaml.safe_load(text)
    document["organism"]["http"] = address
    return yaml.safe_dump(document, sort_keys=False)


def _metrics(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_metrics_scrape_in_prometheus_text_and_match_status(served):
    pump, http, web = served
    async with pump.client("tester") as client:
        for i in range(5):
            await client.ask(Echo(text=f"hi {i}"), to="echo", timeout=HANG_GUARD)
        await pump.inject(envelope("<Echo><Txt>wrong</Txt></Echo>", to="echo"), from_id="tester")  # invalid payload
        await asyncio.wait_for(client.receive(), HANG_GUARD)
        await settle(pump)
    response = await web.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    metrics = _metrics(response.text)
    counters = pump.status()["counters"]
    assert metrics[("agentserver_messages_accepted_total", ())] == counters["accepted"] > 0
    assert metrics[("agentserver_messages_handled_total", ())] == counters["handled"]
    errored = {dict(labels)["code"]: value for (name, labels), value in metrics.items()
               if name == "agentserver_messages_errored_total"}
    assert errored == counters["errored_by_reason"] and errored.get("invalid-payload") == 1
    assert metrics[("agentserver_open_conversations", ())] == pump.status()["conversations"]["open"]
    assert metrics[("agentserver_dead_letters_total", ())] == counters["dead_letters"]
    echo = pump.status()["listeners"]["echo"]
    assert metrics[("agentserver_handler_duration_seconds_count", (("listener", "echo"),))] == echo["handled"] == 5
    assert metrics[("agentserver_handler_duration_seconds_bucket", (("le", "+Inf"), ("listener", "echo")))] == 5
    assert metrics[("agentserver_listener_delivered_total", (("listener", "echo"),))] == echo["delivered"]


async def test_no_metric_is_labelled_with_a_conversation(served):
    pump, http, web = served
    async with pump.client("tester") as client:
        thread_id = await client.send(Echo(text="x"), to="echo")
        await asyncio.wait_for(client.receive(), HANG_GUARD)
    text = (await web.get("/metrics")).text
    assert thread_id not in text
    labels = {key for family in text_string_to_metric_families(text) for s in family.samples for key in s.labels}
    assert labels <= {"code", "listener", "le", "agent", "backend", "kind"}


async def test_two_servers_keep_their_own_registries(start):
    one = await start(organism(ECHO, name="one"))
    two = await start(organism(ECHO, name="two"))
    async with HttpServer(one, "127.0.0.1:0") as a, HttpServer(two, "127.0.0.1:0") as b:
        assert a.registry is not b.registry
        async with one.client("tester") as client:
            await client.ask(Echo(text="x"), to="echo", timeout=HANG_GUARD)
        async with httpx.AsyncClient(timeout=HANG_GUARD) as web:
            first = _metrics((await web.get(f"{a.url}/metrics")).text)
            second = _metrics((await web.get(f"{b.url}/metrics")).text)
    assert first[("agentserver_messages_accepted_total", ())] > second[("agentserver_messages_accepted_total", ())]


async def test_healthz_is_200_while_the_pump_runs_and_503_once_it_stops(served):
    pump, http, web = served
    response = await web.get("/healthz")
    assert response.status_code == 200 and response.json()["ok"] is True
    await pump.shutdown(HANG_GUARD)
    response = await web.get("/healthz")
    assert response.status_code == 503 and response.json()["problems"]


async def test_status_is_the_json_of_pump_status(served):
    pump, http, web = served
    async with pump.client("tester") as client:
        await client.ask(Echo(text="x"), to="echo", timeout=HANG_GUARD)
        await settle(pump)
    body = (await web.get("/status")).json()
    expected = json.loads(json.dumps(pump.status(), default=str))
    body.pop("uptime_s"), expected.pop("uptime_s")
    assert body == expected and body["organism"] == "test-organism"


async def test_the_page_is_one_html_file(served):
    pump, http, web = served
    response = await web.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "EventSource" in response.text and "textContent" in response.text and ".innerHTML" not in response.text


async def _read_hops(response: httpx.Response, want: int) -> list[dict]:
    hops, event = [], None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: ") and event == "hop":
            hops.append(json.loads(line[len("data: "):]))
            if len(hops) >= want:
                return hops
    return hops


async def test_events_stream_the_hops_with_escaped_size_limited_previews(served):
    pump, http, web = served
    await settle(pump)
    async with web.stream("GET", "/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async with pump.client("tester") as client:
            thread_id = await client.send(Echo(text="<b>" + "x" * 2000), to="echo")
            await asyncio.wait_for(client.receive(), HANG_GUARD)
            hops = await asyncio.wait_for(_read_hops(response, 3), HANG_GUARD)  # boot, the Echo, the reply
    mine = [hop for hop in hops if hop["conversation"] == thread_id]
    assert [(h["sender"], h["to"], h["root_tag"], h["outcome"]) for h in mine] == [
        ("tester", "echo", "Echo", "handled"), ("echo", "tester", "EchoReply", "handled")]
    preview = mine[0]["preview"]
    assert preview.startswith("<Echo><Text>&lt;b&gt;xxx") and preview.endswith("…") and len(preview) <= 401
    assert "xmlns" not in preview


async def test_a_page_opened_later_gets_the_recent_hops_first(served):
    pump, http, web = served
    async with pump.client("tester") as client:
        thread_id = await client.send(Echo(text="early"), to="echo")
        await asyncio.wait_for(client.receive(), HANG_GUARD)
        await settle(pump)
    async with web.stream("GET", "/events") as response:
        hops = await asyncio.wait_for(_read_hops(response, 3), HANG_GUARD)
    assert [h["root_tag"] for h in hops if h["conversation"] == thread_id] == ["Echo", "EchoReply"]


async def test_a_slow_events_reader_never_holds_the_pump_back(start):
    """A reader that never reads: its queue fills, the rest is dropped and counted; every message still flows."""
    pump = await start(organism(ECHO, RELAY))
    async with HttpServer(pump, "127.0.0.1:0", reader_queue=5) as http:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's writes back up soon
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (http.host, http.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the headers: subscribed; from here on it reads nothing
        sent = 0
        async with pump.client("tester", inbox_size=5000) as client:
            while http.events_dropped == 0 and sent < 5000:
                await asyncio.gather(*(client.ask(Order(action="forward", arg="echo"), to="relay",
                                                  timeout=HANG_GUARD) for _ in range(50)))
                sent += 50
            await settle(pump)
        assert pump.counters.errored_total == 0 and pump.counters.listener("echo").handled == sent
        async with httpx.AsyncClient(timeout=HANG_GUARD) as web:
            metrics = _metrics((await web.get(f"{http.url}/metrics")).text)
        assert metrics[("agentserver_live_events_dropped_total", ())] == http.events_dropped > 0
        writer.close()


async def test_a_hop_queue_drops_and_counts_what_does_not_fit(start):
    pump = await start(organism(ECHO))
    await settle(pump)
    with pump.events.queue(2) as hops:
        async with pump.client("tester") as client:
            for _ in range(3):
                await client.ask(Echo(text="x"), to="echo", timeout=HANG_GUARD)
        await settle(pump)
        assert hops.dropped == 4  # 6 hops, 2 kept
        first = hops.get_nowait()
        assert first is not None and first.root_tag == "Echo" and first.preview == "<Echo><Text>x</Text></Echo>"
    assert pump.events._observers == [] and pump.events._previewers == []


# ---------------------------------------------------------------------- `agentserver run` with organism.http
@pytest.mark.subprocess
def test_run_serves_http_alongside_the_socket_and_stops_it_cleanly():
    from tests.server_harness import RunningServer, config_text, free_port

    port = free_port()
    with RunningServer(config_text(name="observed").replace("  socket:", f"  http: 127.0.0.1:{port}\n  socket:", 1)) as server:
        assert f"http://127.0.0.1:{port}" in server.log
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=HANG_GUARD)
        assert health.status_code == 200, health.text
        assert httpx.get(f"http://127.0.0.1:{port}/status", timeout=HANG_GUARD).json()["organism"] == "observed"
        assert "agentserver_messages_accepted_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert server.returncode == 0, server.log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=HANG_GUARD)
    server.cleanup()


@pytest.mark.subprocess
def test_run_with_its_http_port_taken_says_so_and_exits_1():
    from tests.server_harness import RunningServer, config_text

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RunningServer(config_text().replace("  socket:", f"  http: 127.0.0.1:{port}\n  socket:", 1), wait=False)
        server.start()
        assert server.process is not None and server.process.wait(HANG_GUARD) == 1
        server.stop()
    assert "cannot start" in server.log and str(port) in server.log, server.log
    server.cleanup()


async def test_healthz_is_503_while_the_journal_replays(tmp_path):
    from agentserver import StreamPump
    from tests.organisms import PROBE

    document = yaml.safe_load(organism(listener("ledger", "Echo", "ledger")))
    document["organism"]["journal"] = str(tmp_path / "journal.db")
    text = yaml.safe_dump(document)
    PROBE.notes["ledger_hold"] = True
    first = StreamPump(load_config("test-organism.yaml", text=text))
    async with first:
        async with first.client("tester") as client:
            await client.send(Echo(text="x"), to="ledger")
            await asyncio.wait_for(PROBE.event("ledger-started").wait(), HANG_GUARD)
            await first.shutdown(0.2)  # cut off: deferred to the next start
    PROBE.reset()
    PROBE.notes["ledger_hold"] = True
    second = StreamPump(load_config("test-organism.yaml", text=text))
    async with second, HttpServer(second, "127.0.0.1:0") as http, httpx.AsyncClient(base_url=http.url) as web:
        await asyncio.wait_for(PROBE.event("ledger-started").wait(), HANG_GUARD)
        response = await web.get("/healthz")
        assert response.status_code == 503 and "replaying" in response.json()["problems"][0]
        PROBE.event("ledger-open").set()
        await settle(second)
        response = await web.get("/healthz")
        assert response.status_code == 200, response.json()
