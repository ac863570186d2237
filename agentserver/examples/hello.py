"""The hello-world organism: a greeter agent that asks a shouter to shout.

    client --Greeting--> greeter --Shout--> shouter
    client <--GreetingReply-- greeter <--Shouted-- shouter

Two hops out, two hops back: `ask --to greeter '<Greeting><Name>Ada</Name></Greeting>'`
answers `<GreetingReply><Text>HELLO, ADA!</Text></GreetingReply>`.
"""


from dataclasses import dataclass

from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse


@xmlify
@dataclass
class Greeting:
    name: str


@xmlify
@dataclass
class GreetingReply:
    text: str


@xmlify
@dataclass
class Shout:
    text: str


@xmlify
@dataclass
class Shouted:
    text: str


async def handle_greeting(payload: Greeting, meta: HandlerMetadata) -> HandlerResponse:
    """Ask the shouter and answer with what it shouted: straight-line code.

    `meta.ask` sends the Shout exactly as `HandlerResponse(Shout(...), to="shouter")`
    would, waits for the shouter's `respond()` (holding no handler slot meanwhile) and
    returns its payload. Use this style when a handler needs answers to go on."""
    shouted = await meta.ask("shouter", Shout(text=f"hello, {payload.name}!"))
    return HandlerResponse.respond(GreetingReply(text=shouted.text))


async def handle_greeting_returning(payload: Greeting | Shouted, meta: HandlerMetadata) -> HandlerResponse | None:
    """The same greeter in the returning style: one call per message it receives.

    It returns the Shout; the shouter's answer arrives later as a new call of this
    handler. Use this style for fire-and-forget work, fan-out to many listeners, or a
    handler that reacts to whatever arrives (a listener receives its own payload class
    from callers, whatever its peers `respond()` with, and SystemError when something
    it sent failed)."""
    if isinstance(payload, Greeting):
        return HandlerResponse(Shout(text=f"hello, {payload.name}!"), to="shouter")
    if isinstance(payload, Shouted):
        return HandlerResponse.respond(GreetingReply(text=payload.text))
    return None


async def handle_shout(payload: Shout, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Shouted(text=payload.text.upper()))
