"""dedupe.py: (sender, message id) pairs remembered for a window, bounded in entries; clock injected."""

from agentserver.message_bus.dedupe import WINDOW_S, Dedupe


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_remembered_pair_is_seen_for_the_window_and_not_after():
    clock = Clock()
    dedupe = Dedupe(clock, window_s=10)
    assert not dedupe.seen("alice", "m1")
    dedupe.remember("alice", "m1")
    assert dedupe.seen("alice", "m1")
    clock.now += 10
    assert dedupe.seen("alice", "m1")  # the window's edge is inside it
    clock.now += 0.001
    assert not dedupe.seen("alice", "m1")


def test_the_pair_is_the_key_not_the_id_alone():
    dedupe = Dedupe(Clock())
    dedupe.remember("alice", "m1")
    assert not dedupe.seen("bob", "m1") and not dedupe.seen("alice", "m2")


def test_the_default_window_is_ten_minutes():
    clock = Clock()
    dedupe = Dedupe(clock)
    assert dedupe.window_s == WINDOW_S == 600.0
    dedupe.remember("a", "1")
    clock.now += 599
    assert dedupe.seen("a", "1")


def test_remembering_again_restarts_the_window():
    clock = Clock()
    dedupe = Dedupe(clock, window_s=10)
    dedupe.remember("a", "1")
    clock.now += 8
    dedupe.remember("a", "1")
    clock.now += 8
    assert dedupe.seen("a", "1") and len(dedupe) == 1


def test_expired_pairs_go_when_something_new_is_remembered():
    clock = Clock()
    dedupe = Dedupe(clock, window_s=10)
    dedupe.remember("a", "1")
    dedupe.remember("a", "2")
    clock.now += 11
    dedupe.remember("a", "3")
    assert len(dedupe) == 1 and dedupe.seen("a", "3")


def test_past_max_entries_the_oldest_go_first():
    dedupe = Dedupe(Clock(), max_entries=3)
    for i in range(5):
        dedupe.remember("a", str(i))
    assert len(dedupe) == 3
    assert [dedupe.seen("a", str(i)) for i in range(5)] == [False, False, True, True, True]


def test_a_refreshed_pair_counts_as_the_newest():
    dedupe = Dedupe(Clock(), max_entries=2)
    dedupe.remember("a", "1")
    dedupe.remember("a", "2")
    dedupe.remember("a", "1")
    dedupe.remember("a", "3")
    assert dedupe.seen("a", "1") and not dedupe.seen("a", "2")


def test_on_remember_hears_new_pairs_but_not_replayed_ones():
    heard = []
    dedupe = Dedupe(Clock(50.0), window_s=100)
    dedupe.on_remember = lambda *pair: heard.append(pair)
    dedupe.remember("a", "1")
    dedupe.remember("b", "2", when=20.0)  # replayed from the journal with its own time
    assert heard == [("a", "1", 50.0)]
    assert dedupe.seen("b", "2")


def test_a_replayed_pair_keeps_its_time_across_a_restart():
    clock = Clock(1000.0)
    dedupe = Dedupe(clock, window_s=10)
    dedupe.remember("a", "1", when=985.0)  # accepted before the restart, 15 s ago
    assert not dedupe.seen("a", "1")
    dedupe.remember("a", "2", when=995.0)
    assert dedupe.seen("a", "2")
