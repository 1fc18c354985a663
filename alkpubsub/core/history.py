"""Topic history and stream positions (protocol.md §5, recovery): opt-in per
topic pattern, bounded by count, bytes and age. Pure logic, no clock: age is
counted in the router's ticks.

Every event on a topic with history gets the next *offset* of that topic's
stream; together with the store's *epoch* (random, new with every store, so a
restarted hub never confuses its positions with an earlier one's) it is a
``StreamPosition``. A subscriber that knows its last position can ask for what
came after it; the answer says whether the history still covered it.
"""

from __future__ import annotations

import fnmatch
import secrets
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_HISTORY_TOPICS",
    "HistoryPolicy",
    "HistoryStore",
    "Recovery",
    "StreamPosition",
    "TopicHistory",
]

DEFAULT_MAX_HISTORY_TOPICS: Final = 10_000


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a subscriber is in a topic's stream: ``"<epoch>:<offset>"`` on the wire."""

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, text: object) -> StreamPosition | None:
        """A position from the wire, or None when malformed."""
        if not isinstance(text, str):
            return None
        epoch, sep, offset = text.rpartition(":")
        if not sep or not epoch or not offset.isdigit() or len(offset) > 18:
            return None
        return cls(epoch, int(offset))

    def next(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.offset + 1)


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much of a topic's stream is kept: at most ``max_events`` events and
    ``max_bytes`` bytes, none older than ``max_age`` seconds (None: no age limit)."""

    max_events: int = 1000
    max_bytes: int = 1024 * 1024
    max_age: float | None = 300.0

    def __post_init__(self) -> None:
        if self.max_events <= 0 or self.max_bytes <= 0:
            raise ValueError("max_events and max_bytes must be positive")
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError("max_age must be positive (or None)")


@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to "what came after ``since``": the frames to replay, the
    position of the last event the subscriber then has, and whether nothing was
    missing (False: wrong epoch, or older than the history reaches)."""

    frames: list[bytes]
    position: StreamPosition
    recovered: bool


class TopicHistory:
    """The kept tail of one topic's stream."""

    __slots__ = ("_events", "epoch", "max_age_ticks", "nbytes", "offset", "policy")

    def __init__(self, epoch: str, policy: HistoryPolicy, tick_interval: float) -> None:
        self.epoch = epoch
        self.policy = policy
        self.max_age_ticks = (
            None if policy.max_age is None else max(1, int(-(-policy.max_age // tick_interval)))
        )
        self.offset = 0  # the offset of the last event appended (0: none yet)
        self.nbytes = 0
        self._events: deque[tuple[int, int, bytes]] = deque()  # (offset, tick, frame)

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.offset)

    def append(self, frame: bytes, tick: int) -> int:
        """Keep ``frame`` as the next event; returns its offset."""
        self.offset += 1
        events = self._events
        events.append((self.offset, tick, frame))
        self.nbytes += len(frame)
        policy = self.policy
        while events and (len(events) > policy.max_events or self.nbytes > policy.max_bytes):
            self.nbytes -= len(events.popleft()[2])
        return self.offset

    def expire(self, tick: int) -> None:
        if self.max_age_ticks is None:
            return
        events = self._events
        while events and tick - events[0][1] >= self.max_age_ticks:
            self.nbytes -= len(events.popleft()[2])

    def after(self, since: StreamPosition | None) -> Recovery:
        """What came after ``since`` (None: nothing to replay, only the position)."""
        current = self.position
        if since is None:
            return Recovery([], current, True)
        if since.epoch != self.epoch or since.offset > self.offset:
            return Recovery([], current, False)
        events = self._events
        oldest = events[0][0] if events else self.offset + 1
        if since.offset + 1 < oldest:  # some of what it missed is gone
            return Recovery([], current, False)
        skip = since.offset + 1 - oldest
        frames = [frame for _, _, frame in list(events)[skip:]]
        return Recovery(frames, current, True)


class HistoryStore:
    """The histories of every topic matching a policy's pattern (shell-style,
    e.g. ``"chat.*"`` matches every topic of type ``chat.*`` or id, since the
    pattern is matched against the full topic ``type:id``).

    At most ``max_topics`` topics are kept; the one least recently written is
    forgotten first (its subscribers then fail to recover, as after a restart).
    """

    def __init__(
        self,
        policies: Mapping[str, HistoryPolicy] | Iterable[tuple[str, HistoryPolicy]],
        *,
        tick_interval: float = 1.0,
        max_topics: int = DEFAULT_MAX_HISTORY_TOPICS,
        epoch: str | None = None,
    ) -> None:
        items = policies.items() if isinstance(policies, Mapping) else policies
        self._policies = [(pattern, policy) for pattern, policy in items]
        self.epoch = epoch or secrets.token_urlsafe(6)
        self.tick_interval = tick_interval
        self.max_topics = max_topics
        self.tick = 0
        self._topics: OrderedDict[str, TopicHistory] = OrderedDict()
        self._policy_of: dict[str, HistoryPolicy | None] = {}
        # Each topic history gets its own epoch: one forgotten and begun again
        # (max_topics) never hands out positions that an older one handed out.
        self._generation = 0

    def __bool__(self) -> bool:
        return bool(self._policies)

    def policy(self, topic: str) -> HistoryPolicy | None:
        """The policy of ``topic`` (the first pattern that matches), cached."""
        try:
            return self._policy_of[topic]
        except KeyError:
            pass
        found = next(
            (policy for pattern, policy in self._policies if fnmatch.fnmatchcase(topic, pattern)),
            None,
        )
        if len(self._policy_of) >= 4 * self.max_topics:
            self._policy_of.clear()  # a cache, not a record of every topic ever seen
        self._policy_of[topic] = found
        return found

    def _history(self, topic: str) -> TopicHistory | None:
        history = self._topics.get(topic)
        if history is not None:
            self._topics.move_to_end(topic)
            return history
        policy = self.policy(topic)
        if policy is None:
            return None
        self._generation += 1
        epoch = f"{self.epoch}.{self._generation}"
        history = self._topics[topic] = TopicHistory(epoch, policy, self.tick_interval)
        if len(self._topics) > self.max_topics:
            self._topics.popitem(last=False)
        return history

    def record(self, topic: str, frame: bytes) -> StreamPosition | None:
        """Keep ``frame`` if ``topic`` has history; returns its position."""
        history = self._history(topic)
        if history is None:
            return None
        return StreamPosition(history.epoch, history.append(frame, self.tick))

    def after(self, topic: str, since: StreamPosition | None) -> Recovery | None:
        """Recovery for a subscriber of ``topic``; None if it has no history."""
        history = self._history(topic)
        return None if history is None else history.after(since)

    def advance(self) -> None:
        """One tick passed: drop events past their age."""
        self.tick += 1
        for history in self._topics.values():
            history.expire(self.tick)

    @property
    def nbytes(self) -> int:
        return sum(history.nbytes for history in self._topics.values())
