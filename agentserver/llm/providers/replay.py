"""The `replay` provider: scripted answers, for users' own tests (like pydantic-ai's
TestModel or AutoGen's replay client). Nothing leaves the process.

```yaml
- name: script
  provider: replay
  answers:
    - when: "<Add>"                  # given whenever the last user message contains <Add>
      text: "<Sum><Value>3</Value></Sum>"
    - "<Plan><Step>ask</Step></Plan>"  # the plain answers are given in turn, cycling
    - "<Plan><Step>done</Step></Plan>"
```

Selection: the first answer whose `when` occurs in the last user message; otherwise
the next plain answer (without `when`), in order, starting again after the last. With
no plain answer and no `when` matching, the attempt fails as a request error naming
the backend. Usage is estimated at four characters a token. With `on_token` the text
is streamed in a few pieces (at most four), yielding to the event loop between them.
"""

from __future__ import annotations

import asyncio

from agentserver.llm.providers.base import BackendFailure, ChatRequest, FailureKind, TokenCallback
from agentserver.llm.settings import BackendConfig, ReplayAnswer
from agentserver.llm.types import Completion, Usage, estimate_tokens

__all__ = ["ReplayProvider"]

STREAM_PIECES = 4


class ReplayProvider:
    """Answers from `answers:`, chosen by `when` or in turn."""

    def __init__(self, backend: BackendConfig) -> None:
        self.backend = backend
        self._matched = tuple(a for a in backend.answers if a.when is not None)
        self._plain = tuple(a for a in backend.answers if a.when is None)
        self._next = 0

    def choose(self, request: ChatRequest) -> ReplayAnswer:
        last_user = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        for answer in self._matched:
            assert answer.when is not None
            if answer.when in last_user:
                return answer
        if not self._plain:
            raise BackendFailure(f"replay backend {self.backend.name!r} has no answer for this request: no `when` "
                                 "occurs in the last user message and there is no answer without `when`",
                                 kind=FailureKind.REQUEST)
        answer = self._plain[self._next % len(self._plain)]
        self._next = (self._next + 1) % len(self._plain)
        return answer

    async def complete(self, request: ChatRequest, *, on_token: TokenCallback | None = None) -> Completion:
        text = self.choose(request).text
        if on_token is not None:
            size = max(1, -(-len(text) // STREAM_PIECES))
            for start in range(0, len(text), size):
                await asyncio.sleep(0)
                on_token(text[start:start + size])
        usage = Usage(sum(estimate_tokens(m["content"]) for m in request.messages), estimate_tokens(text))
        return Completion(text, usage, self.backend.name, request.model or "replay")

    async def aclose(self) -> None:
        return None
