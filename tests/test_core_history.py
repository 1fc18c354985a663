"""Topic history and stream positions, without a network."""

from __future__ import annotations

import pytest

from alkpubsub.core.history import HistoryPolicy, HistoryStore, StreamPosition


def frames(*numbers: int) -> list[bytes]:
    return [f'{{"type":"t","id":"1","payload":{n}}}'.encode() for n in numbers]


def test_positions_parse_and_print() -> None:
    position = StreamPosition("ab.3", 17)
    assert str(position) == "ab.3:17"
    assert StreamPosition.parse("ab.3:17") == position
    for bad in (None, 5, "", ":1", "ab", "ab:", "ab:-1", "ab:x", "a:" + "9" * 19):
        assert StreamPosition.parse(bad) is None


def test_only_topics_matching_a_pattern_have_history() -> None:
    store = HistoryStore({"chat.*": HistoryPolicy()})
    assert store.record("chat.room:1", b"x") is not None
    assert store.record("job.status:1", b"x") is None
    assert store.after("job.status:1", None) is None


def test_recovery_replays_exactly_what_came_after() -> None:
    store = HistoryStore({"t:*": HistoryPolicy()})
    positions = [store.record("t:1", frame) for frame in frames(1, 2, 3, 4)]
    assert [p.offset for p in positions if p] == [1, 2, 3, 4]
    second = positions[1]
    assert second is not None
    recovery = store.after("t:1", second)
    assert recovery is not None
    assert recovery.recovered
    assert recovery.frames == frames(3, 4)
    assert recovery.position == positions[3]
    caught_up = store.after("t:1", recovery.position)
    assert caught_up is not None
    assert caught_up.frames == []
    assert caught_up.recovered


def test_recovery_fails_when_history_no_longer_reaches_or_epoch_differs() -> None:
    store = HistoryStore({"t:*": HistoryPolicy(max_events=2)})
    first = store.record("t:1", b"1")
    for frame in frames(2, 3, 4):
        store.record("t:1", frame)
    assert first is not None
    too_old = store.after("t:1", first)
    assert too_old is not None
    assert not too_old.recovered
    assert too_old.frames == []
    assert too_old.position.offset == 4  # the subscriber continues from now
    restarted = HistoryStore({"t:*": HistoryPolicy()})  # a new hub process
    other_epoch = restarted.after("t:1", first)
    assert other_epoch is not None
    assert not other_epoch.recovered
    future = store.after("t:1", StreamPosition(first.epoch, 99))
    assert future is not None
    assert not future.recovered


def test_history_is_bounded_by_count_bytes_and_age() -> None:
    store = HistoryStore({"t:*": HistoryPolicy(max_events=100, max_bytes=50, max_age=2)})
    for frame in frames(*range(20)):
        store.record("t:1", frame)
    assert store.nbytes <= 50
    store.advance()
    store.advance()
    assert store.nbytes == 0  # older than 2 ticks of 1 s


def test_forgotten_topics_never_reuse_positions() -> None:
    store = HistoryStore({"t:*": HistoryPolicy()}, max_topics=2)
    old = store.record("t:1", b"1")
    store.record("t:2", b"2")
    store.record("t:3", b"3")  # t:1 is forgotten
    for frame in frames(*range(5)):
        store.record("t:1", frame)  # begun again: a new epoch
    assert old is not None
    recovery = store.after("t:1", old)
    assert recovery is not None
    assert not recovery.recovered


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="positive"):
        HistoryPolicy(max_events=0)
    with pytest.raises(ValueError, match="max_age"):
        HistoryPolicy(max_age=0)
