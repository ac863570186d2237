"""The budget ledger: reservations against both accounts, settling with real usage,
forgetting conversations, and the bound on how many it keeps."""

from __future__ import annotations

import logging

import pytest

from agentserver.llm import BudgetExceeded, BudgetPolicy
from agentserver.llm.budget import Ledger


def test_reserve_then_settle_counts_the_real_usage():
    ledger = Ledger()
    policy = BudgetPolicy(tokens_per_conversation=100, tokens_per_agent=1000)
    reservation = ledger.reserve("agent", "c1", policy, 90)
    with pytest.raises(BudgetExceeded, match="90 reserved"):
        ledger.reserve("agent", "c1", policy, 20)
    ledger.settle(reservation, 30)
    ledger.settle(reservation, 30)  # settling twice counts once
    assert ledger.used_by_conversation("c1") == 30 and ledger.used_by_agent("agent") == 30
    ledger.settle(ledger.reserve("agent", "c1", policy, 70), 70)
    assert ledger.used_by_conversation("c1") == 100


def test_without_a_policy_usage_is_still_counted():
    ledger = Ledger()
    ledger.settle(ledger.reserve("agent", None, None, 10**9), 12)
    assert ledger.used_by_agent("agent") == 12 and ledger.conversations == 0


def test_forgetting_a_conversation_while_a_request_is_in_flight_is_harmless():
    ledger = Ledger()
    reservation = ledger.reserve("agent", "c1", BudgetPolicy(tokens_per_conversation=50), 40)
    ledger.forget_conversation("c1")
    ledger.settle(reservation, 40)
    assert ledger.conversations == 0 and ledger.used_by_agent("agent") == 40


def test_the_ledger_keeps_a_bounded_number_of_conversations(caplog):
    ledger = Ledger(max_conversations=3)
    busy = ledger.reserve("agent", "busy", None, 5)  # in flight: never dropped
    for key in ("c1", "c2", "c3", "c4"):
        ledger.settle(ledger.reserve("agent", key, None, 1), 1)
    assert ledger.conversations == 3
    assert ledger.used_by_conversation("busy") == 0 and "busy" in ledger._conversations
    assert ledger.used_by_conversation("c1") == 0 and ledger.used_by_conversation("c4") == 1
    assert any(r.levelno == logging.WARNING and "forget_conversation" in r.getMessage() for r in caplog.records)
    ledger.settle(busy, 5)
