"""The HTTP part shared by the `openai` and `anthropic` providers.

One `httpx.AsyncClient` per backend, made when the provider is made and closed by its
`aclose()`; its pool holds at most `max_concurrent` connections and every operation
(connect, send, wait for the next bytes) is bounded by the backend's `timeout_s`.

A request is always sent as a streamed httpx response inside `async with`, so
whatever ends it early (a cancelled caller, a timeout, a malformed answer) closes the
connection there and then; the server sees the client go away.

Everything that can go wrong becomes a `BackendFailure` with a short reason: an HTTP
error status (with `Retry-After` parsed, the server's own error message cut short and
the API key blanked out of it), a connection error, a timeout, or an answer that is
not what the API promises (not JSON, missing fields, too large, a broken stream).
Request headers are built per request and never kept on the client, so no key shows
up in a client's repr.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import httpx

from agentserver.llm.providers.base import BackendFailure, FailureKind, classify_status, parse_retry_after, redact
from agentserver.llm.providers.sse import SseDecoder, SseError, SseEvent
from agentserver.llm.settings import BackendConfig

__all__ = ["HttpProvider", "malformed", "dig", "token_count", "decode_event", "MAX_ANSWER_BYTES"]

MAX_ANSWER_BYTES = 8 << 20  # a JSON answer, or one event of a stream
MAX_ERROR_BYTES = 16 << 10  # read of an error body, for its message


def malformed(what: str) -> BackendFailure:
    """A failure for an answer that does not follow the API (retried: servers hiccup)."""
    return BackendFailure(f"malformed answer: {what}", kind=FailureKind.TRANSIENT)


class HttpProvider:
    """Sends JSON, reads JSON or server-sent events, and turns every failure into a
    `BackendFailure`."""

    def __init__(self, backend: BackendConfig, api_key: str | None, *, wall_clock: Callable[[], float]) -> None:
        self.backend = backend
        self._api_key = api_key
        self._wall_clock = wall_clock
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(backend.timeout_s),
            limits=httpx.Limits(max_connections=backend.max_concurrent,
                                max_keepalive_connections=backend.max_concurrent),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend.name!r}>"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post_json(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> Any:
        """POST `body`; return the decoded JSON answer."""
        try:
            async with self._client.stream("POST", url, json=body, headers=headers) as response:
                await self._check_status(response)
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES:
                        raise malformed(f"larger than {MAX_ANSWER_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise self._transport_failure(exc) from None
        try:
            return json.loads(data)
        except ValueError:
            raise malformed(f"not JSON: {redact(data[:200].decode('utf-8', 'replace'), self._api_key)}") from None

    async def post_stream(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
                          on_event: Callable[[SseEvent], None]) -> None:
        """POST `body` and call `on_event` with each server-sent event until the
        response ends. Whatever `on_event` raises ends the request and propagates."""
        decoder = SseDecoder(max_event_bytes=MAX_ANSWER_BYTES)
        try:
            async with self._client.stream("POST", url, json=body, headers=headers) as response:
                await self._check_status(response)
                kind = response.headers.get("content-type", "")
                if not kind.startswith("text/event-stream"):
                    raise malformed(f"expected an event stream, got content type {redact(kind, None, limit=80)!r}")
                async for chunk in response.aiter_bytes():
                    for event in decoder.feed(chunk):
                        on_event(event)
        except httpx.HTTPError as exc:
            raise self._transport_failure(exc) from None
        except SseError as exc:
            raise malformed(str(exc)) from None

    async def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            if status >= 300:
                raise BackendFailure(f"HTTP {status} (a redirect: check base_url)", kind=FailureKind.BACKEND,
                                     status=status)
            return
        data = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) >= MAX_ERROR_BYTES:
                    break
        except httpx.HTTPError:
            pass  # the status says enough
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=self._wall_clock)
        detail = self._error_detail(bytes(data[:MAX_ERROR_BYTES]))
        reason = f"HTTP {status}" + (f": {detail}" if detail else "")
        raise BackendFailure(reason, kind=classify_status(status), status=status, retry_after=retry_after)

    def _error_detail(self, body: bytes) -> str:
        """The server's own words about an error: `error.message` (both APIs), else the body."""
        text = body.decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except ValueError:
            return redact(text.strip(), self._api_key, limit=200)
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str):
            return redact(message, self._api_key, limit=200)
        return redact(text.strip(), self._api_key, limit=200)

    def _transport_failure(self, exc: httpx.HTTPError) -> BackendFailure:
        if isinstance(exc, httpx.TimeoutException):
            what = f"timed out after {self.backend.timeout_s:g} s ({type(exc).__name__})"
        elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            what = f"connection broke: {type(exc).__name__}"
        else:
            what = f"connection failed: {type(exc).__name__}"
        detail = redact(str(exc), self._api_key, limit=160)
        return BackendFailure(f"{what}: {detail}" if detail else what, kind=FailureKind.TRANSIENT)


def dig(data: Any, *path: str | int) -> Any:
    """`data[path0][path1]...`, or raise a malformed-answer failure naming the path."""
    value = data
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            shown = ".".join(str(p) for p in path)
            raise malformed(f"no {shown}") from None
    return value


def token_count(value: Any) -> int:
    """A usage count from an answer: a non-negative int, else malformed."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise malformed(f"token count {value!r} is not a non-negative integer")
    return value


def decode_event(event: SseEvent) -> Any:
    try:
        return json.loads(event.data)
    except ValueError:
        raise malformed("an event's data is not JSON") from None
