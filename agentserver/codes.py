"""Why a message failed: one short code per cause, and the canned text a sender is told.

A refusal or failure carries an `ErrorCode`; the sender only ever sees the code and
its canned sentence from `CANNED` (never a validator's output or anything about the
organism's topology). The full reason goes to the log and the dead letters.

This module imports nothing, so the client, the protocol and the pump share it.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ErrorCode", "CANNED", "canned"]


class ErrorCode(str, Enum):
    """The closed set of reasons. A `str`, so `code == "no-route"` reads naturally."""

    # refused before or in the pipeline: the sender hears of it
    MALFORMED = "malformed"
    TOO_LARGE = "too-large"
    FORBIDDEN_DTD = "forbidden-dtd"
    INVALID_ENVELOPE = "invalid-envelope"
    FORBIDDEN_SENDER = "forbidden-sender"
    NO_ROUTE = "no-route"
    INVALID_PAYLOAD = "invalid-payload"
    UNREADABLE_PAYLOAD = "unreadable-payload"
    UNKNOWN_THREAD = "unknown-thread"
    ROUTING = "routing"
    # a handler failed: the caller of its branch hears of it
    HANDLER = "handler"
    TIMEOUT = "timeout"
    WRONG_TYPE = "wrong-type"
    # an awaited call (meta.ask): its peer's branch ended without an answer; an answer came too late
    NO_ANSWER = "no-answer"
    LATE = "late"
    # a language model could not be used (meta.llm, LLM agents): the caller hears of it
    BUDGET = "budget"
    LLM_ERROR = "llm-error"
    LLM_UNAVAILABLE = "llm-unavailable"
    LLM_TOO_LARGE = "llm-too-large"
    LLM_CONFIG = "llm-config"
    LLM_INVALID = "llm-invalid"
    # the conversation was ended: its root caller hears of it, once
    HOPS = "hops"
    CONVERSATION_BUDGET = "conversation-budget"
    CONVERSATION_TIMEOUT = "conversation-timeout"
    CANCELLED = "cancelled"
    # the connection itself (the server refuses the frame or closes the connection)
    BAD_TOKEN = "bad-token"
    BAD_ARGUMENT = "bad-argument"
    UNAUTHORIZED = "unauthorized"
    TOO_MANY_CONNECTIONS = "too-many-connections"
    HELLO_TIMEOUT = "hello-timeout"
    FRAME_TIMEOUT = "frame-timeout"
    IDLE_TIMEOUT = "idle-timeout"
    ALREADY_NAMED = "already-named"
    UNKNOWN_VERB = "unknown-verb"
    UNSUPPORTED_VERSION = "unsupported-version"
    # a message sent again under an id already accepted: acked again, not processed twice
    DUPLICATE = "duplicate"
    # nobody can be told
    SHUTDOWN = "shutdown"
    UNDELIVERABLE = "undeliverable"
    OVERLOADED = "overloaded"
    # a bug in agentserver itself (logged as an ERROR with its traceback)
    INTERNAL = "internal"

    def __str__(self) -> str:
        return self.value


CANNED: dict[ErrorCode, str] = {
    ErrorCode.MALFORMED: "The message is not well-formed XML.",
    ErrorCode.TOO_LARGE: "The message is larger than this server accepts.",
    ErrorCode.FORBIDDEN_DTD: "DTDs and entity declarations are not accepted.",
    ErrorCode.INVALID_ENVELOPE: "The envelope is not valid.",
    ErrorCode.FORBIDDEN_SENDER: "That sender name is not allowed.",
    ErrorCode.NO_ROUTE: "No listener accepts this message.",
    ErrorCode.INVALID_PAYLOAD: "The payload does not match the listener's schema.",
    ErrorCode.UNREADABLE_PAYLOAD: "The payload could not be read into its type.",
    ErrorCode.UNKNOWN_THREAD: "That thread is not known.",
    ErrorCode.ROUTING: "That destination is not reachable from here.",
    ErrorCode.HANDLER: "The handler failed.",
    ErrorCode.TIMEOUT: "The handler did not finish in time.",
    ErrorCode.WRONG_TYPE: "The handler returned something it may not return.",
    ErrorCode.NO_ANSWER: "The peer's branch ended without an answer.",
    ErrorCode.LATE: "The answer came after its caller stopped waiting.",
    ErrorCode.BUDGET: "The token budget for this conversation or agent is spent.",
    ErrorCode.LLM_ERROR: "The language model refused the request.",
    ErrorCode.LLM_UNAVAILABLE: "No language model could answer.",
    ErrorCode.LLM_TOO_LARGE: "The request is larger than any language model here takes.",
    ErrorCode.LLM_CONFIG: "The language model is not configured.",
    ErrorCode.LLM_INVALID: "The language model did not produce a usable answer.",
    ErrorCode.HOPS: "The conversation exceeded its hop limit and was ended.",
    ErrorCode.CONVERSATION_BUDGET: "The conversation exceeded its budget of units and was ended.",
    ErrorCode.CONVERSATION_TIMEOUT: "The conversation ran over its deadline and was ended.",
    ErrorCode.CANCELLED: "The conversation was cancelled.",
    ErrorCode.BAD_TOKEN: "The token is missing or wrong.",
    ErrorCode.BAD_ARGUMENT: "An argument of the request is not valid.",
    ErrorCode.UNAUTHORIZED: "Authenticate first: the first frame must be a hello with the token.",
    ErrorCode.TOO_MANY_CONNECTIONS: "The server has as many connections as it takes.",
    ErrorCode.HELLO_TIMEOUT: "No hello arrived in time.",
    ErrorCode.FRAME_TIMEOUT: "A frame was started but not finished in time.",
    ErrorCode.IDLE_TIMEOUT: "The connection was idle for too long.",
    ErrorCode.ALREADY_NAMED: "This connection already has a name.",
    ErrorCode.UNKNOWN_VERB: "Unknown control request.",
    ErrorCode.UNSUPPORTED_VERSION: "No protocol version in common with the server.",
    ErrorCode.DUPLICATE: "That message was accepted already.",
    ErrorCode.SHUTDOWN: "The server shut down before the message was handled.",
    ErrorCode.UNDELIVERABLE: "The recipient is gone.",
    ErrorCode.OVERLOADED: "The server is overloaded.",
    ErrorCode.INTERNAL: "The server failed on this message; it has been logged.",
}


def canned(code: str) -> str:
    """The sentence a sender is told for `code` (a generic one for unknown codes)."""
    try:
        return CANNED[ErrorCode(code)]
    except ValueError:
        return "Error."
