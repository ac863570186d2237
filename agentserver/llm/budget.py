"""Token budgets: per conversation and per agent, checked before a request is sent.

A request first *reserves* its worst case (the estimated prompt plus `max_tokens`)
against both of its accounts; if either would then pass its limit, `BudgetExceeded`
is raised and nothing is sent. When the answer comes back the reservation is settled
with the tokens really spent. Reserving (rather than only comparing) keeps concurrent
requests of one conversation from all passing the check together.

The agent accounts live for the process run; a conversation's account lives until
`Ledger.forget_conversation` (the pump calls it when the conversation ends). So that a
caller that never forgets cannot grow it without bound, the ledger keeps at most
`max_conversations` conversation accounts and drops the least recently used idle one
beyond that (its budget starts again from zero; logged at the 1st, 10th, 100th...
time, and counted in `dropped_conversations`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from agentserver.llm.types import BudgetExceeded

__all__ = ["BudgetPolicy", "Ledger", "Reservation"]

log = logging.getLogger("agentserver.llm")


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """Token limits for one agent's requests; None means no limit."""

    tokens_per_conversation: int | None = None
    tokens_per_agent: int | None = None  # per process run


class _Account:
    __slots__ = ("used", "reserved")

    def __init__(self) -> None:
        self.used = 0
        self.reserved = 0


@dataclass(slots=True)
class Reservation:
    """Tokens set aside for one request in flight; settle it exactly once."""

    tokens: int
    agent_account: _Account
    conversation_account: _Account | None
    settled: bool = False


class Ledger:
    """Tokens used (and reserved) per agent and per conversation."""

    def __init__(self, *, max_conversations: int = 100_000) -> None:
        if max_conversations < 1:
            raise ValueError("max_conversations must be at least 1")
        self._max_conversations = max_conversations
        self._agents: dict[str, _Account] = {}
        self._conversations: OrderedDict[str, _Account] = OrderedDict()
        self.dropped_conversations = 0  # accounts forgotten to keep within max_conversations

    def reserve(self, agent: str, conversation: str | None, policy: BudgetPolicy | None, tokens: int,
                *, detail: str = "") -> Reservation:
        """Set `tokens` aside for a request of `agent` in `conversation`, or raise
        `BudgetExceeded` (reserving nothing) if that would pass a limit of `policy`.
        `detail` is added to the error message (how the estimate was made)."""
        agent_account = self._agents.get(agent)
        if agent_account is None:
            agent_account = self._agents[agent] = _Account()
        conversation_account = self._conversation(conversation) if conversation is not None else None
        if policy is not None:
            suffix = f" ({detail})" if detail else ""
            limit = policy.tokens_per_agent
            if limit is not None and agent_account.used + agent_account.reserved + tokens > limit:
                raise BudgetExceeded(
                    f"agent {agent!r} is over its budget of {limit} tokens per run: {agent_account.used} used, "
                    f"{agent_account.reserved} reserved by requests in flight, this request may need {tokens}{suffix}")
            limit = policy.tokens_per_conversation
            if limit is not None and conversation_account is not None and (
                    conversation_account.used + conversation_account.reserved + tokens > limit):
                raise BudgetExceeded(
                    f"agent {agent!r} is over its budget of {limit} tokens per conversation: "
                    f"{conversation_account.used} used, {conversation_account.reserved} reserved by requests "
                    f"in flight, this request may need {tokens}{suffix}")
        agent_account.reserved += tokens
        if conversation_account is not None:
            conversation_account.reserved += tokens
        return Reservation(tokens, agent_account, conversation_account)

    def settle(self, reservation: Reservation, spent: int) -> None:
        """Release the reservation and count `spent` tokens in its place."""
        if reservation.settled:
            return
        reservation.settled = True
        for account in (reservation.agent_account, reservation.conversation_account):
            if account is not None:
                account.reserved -= reservation.tokens
                account.used += spent

    def used_by_agent(self, agent: str) -> int:
        account = self._agents.get(agent)
        return account.used if account is not None else 0

    def used_by_conversation(self, conversation: str) -> int:
        account = self._conversations.get(conversation)
        return account.used if account is not None else 0

    def forget_conversation(self, conversation: str) -> None:
        """Drop a conversation's account (requests still in flight settle harmlessly)."""
        self._conversations.pop(conversation, None)

    @property
    def conversations(self) -> int:
        return len(self._conversations)

    def _conversation(self, key: str) -> _Account:
        account = self._conversations.get(key)
        if account is not None:
            self._conversations.move_to_end(key)
            return account
        if len(self._conversations) >= self._max_conversations:
            self._drop_oldest_idle()
        account = self._conversations[key] = _Account()
        return account

    def _drop_oldest_idle(self) -> None:
        for key, account in self._conversations.items():
            if account.reserved == 0:
                del self._conversations[key]
                self.dropped_conversations += 1
                if _is_power_of_ten(self.dropped_conversations):  # 1, 10, 100...: noticed, not flooded
                    log.warning("llm: more than %d conversation budgets kept; forgot the least recently used one "
                                "(its count starts again from zero), %d so far; is forget_conversation() being "
                                "called?", self._max_conversations, self.dropped_conversations)
                return
        # every account has a request in flight: keep them all; this bound is then the
        # number of requests in flight, which other limits bound.


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0 and n > 1:
        n //= 10
    return n == 1
