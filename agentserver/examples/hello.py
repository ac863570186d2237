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


async def handle_greeting(payload: Greeting | Shouted, meta: HandlerMetadata) -> HandlerResponse | None:
    """A Greeting: ask the shouter. The shouter's answer (Shouted): reply to the greeter's caller.

    A listener receives its own payload class from callers, and whatever its peers
    `respond()` with (plus SystemError when something it sent failed).
    """
    if isinstance(payload, Greeting):
        return HandlerResponse(Shout(text=f"hello, {payload.name}!"), to="shouter")
    if isinstance(payload, Shouted):
        return HandlerResponse.respond(GreetingReply(text=payload.text))
    return None


async def handle_shout(payload: Shout, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Shouted(text=payload.text.upper()))
