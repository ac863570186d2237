"""What a handler is given (metadata, ask, llm, stream) and what becomes of its call."""

from tests.llm_organisms import Speak
from tests.organisms import PROBE
from tests.support import HANG_GUARD, organism

SPEAKER = {"name": "speaker", "payload_class": "tests.llm_organisms.Speak", "handler": "tests.llm_organisms.speaker",
           "peers": ["echoer"]}
ECHOER = {"name": "echoer", "payload_class": "tests.llm_organisms.Speak", "handler": "tests.llm_organisms.echoer"}


async def test_a_client_that_asks_to_see_the_answer_stream_receives_the_pieces_before_the_reply(start):
    pump = await start(organism(SPEAKER, ECHOER))
    pieces: list[str] = []
    async with pump.client("tester") as client:
        reply = await client.ask(Speak(words="one two three"), to="speaker", timeout=HANG_GUARD, on_token=pieces.append)
        assert pieces == ["one ", "two ", "three "]  # all before the reply was returned
        assert reply.payload.words == "one two three"
        assert PROBE.notes["speaker_streams"] and not PROBE.notes["echoer_streams"]  # only the agent answering the client
        assert client.session.streaming == set()  # forgotten once the ask is over
        # without on_token nothing streams
        pieces.clear()
        await client.ask(Speak(words="quiet"), to="speaker", timeout=HANG_GUARD)
    assert pieces == [] and not PROBE.notes["speaker_streams"]
