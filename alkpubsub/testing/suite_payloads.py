"""Payload semantics, the same on every bus: a table of payloads, each either
delivered as the same JSON value everywhere or refused with the same error.

The embedded default (memory) promises that code behaves the same when only
the URL changes; this suite holds every transport, the memory one included, to
that promise. ``PayloadConformance`` needs the ``bus`` fixture (see plugin).
"""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from ..core.codec import DEFAULT_MAX_FRAME_BYTES
from ..core.envelope import make_event
from ..core.errors import FrameTooLargeError, InvalidEnvelopeError
from ..target import TypedEventTarget
from .helpers import Recorder, within

__all__ = ["PAYLOAD_TABLE", "REFUSED_PAYLOADS", "PayloadCase", "PayloadConformance"]


class _Job(BaseModel):
    name: str
    started: datetime.datetime
    tags: set[str]


class _Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class PayloadCase:
    """A payload (built fresh for each dispatch) and what a listener receives,
    or the exception every target raises from ``dispatch_event``."""

    name: str
    make: Callable[[], Any]
    expected: Any = None
    raises: type[Exception] | None = None


_WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)

#: Payloads that travel, and the JSON value every listener receives.
PAYLOAD_TABLE: tuple[PayloadCase, ...] = (
    PayloadCase("json", lambda: {"a": [1, 2.5, None, True, "ü"]}, {"a": [1, 2.5, None, True, "ü"]}),
    PayloadCase("datetime", lambda: _WHEN, "2024-05-06T07:08:09Z"),
    PayloadCase("naive datetime", lambda: datetime.datetime(2024, 5, 6), "2024-05-06T00:00:00"),
    PayloadCase("date", lambda: datetime.date(2024, 5, 6), "2024-05-06"),
    PayloadCase("set", lambda: {3, 1, 2}, [1, 2, 3]),
    PayloadCase("tuple", lambda: (1, "a", (2, 3)), [1, "a", [2, 3]]),
    PayloadCase("nan", lambda: float("nan"), None),
    PayloadCase("infinity", lambda: {"x": float("inf")}, {"x": None}),
    PayloadCase(
        "pydantic model",
        lambda: _Job(name="build", started=_WHEN, tags={"ci"}),
        {"name": "build", "started": "2024-05-06T07:08:09Z", "tags": ["ci"]},
    ),
    PayloadCase("bytes", lambda: b"raw", "raw"),
    PayloadCase("int keys", lambda: {1: "a", 2: {3: "b"}}, {"1": "a", "2": {"3": "b"}}),
    PayloadCase("decimal", lambda: decimal.Decimal("1.50"), "1.50"),
    PayloadCase("uuid", lambda: uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
    PayloadCase("enum", lambda: _Colour.RED, "red"),
    PayloadCase("big int", lambda: 2**70, 2**70),
)

#: Payloads no target accepts: ``dispatch_event`` raises before anything is sent.
REFUSED_PAYLOADS: tuple[PayloadCase, ...] = (
    PayloadCase("object", object, raises=InvalidEnvelopeError),
    PayloadCase("non-UTF-8 bytes", lambda: b"\xff\xfe", raises=InvalidEnvelopeError),
    PayloadCase("lone surrogate", lambda: "\ud800", raises=InvalidEnvelopeError),
    PayloadCase(
        "over max_frame_bytes", lambda: "x" * DEFAULT_MAX_FRAME_BYTES, raises=FrameTooLargeError
    ),
)


def _distinct(targets: list[TypedEventTarget]) -> list[TypedEventTarget]:
    return list(dict.fromkeys(targets))  # the memory bus is one target n times


@pytest.mark.asyncio
class PayloadConformance:
    """Every payload of the table, published from every target of a bus, reaches
    every target's listener as the same JSON value; unsendable ones are refused
    with the same error everywhere."""

    async def test_payloads_arrive_json_normalised_everywhere(self, bus: Any) -> None:
        targets = _distinct(await bus.open(3))
        # One topic per publisher: order holds per publisher (B3), not across them.
        recorders = {
            (n, origin): Recorder(f"target-{n} from target-{origin}")
            for n in range(len(targets))
            for origin in range(len(targets))
        }
        for (n, origin), recorder in recorders.items():
            targets[n].add_event_listener(f"payloads:table-{origin}", recorder)
        for target in targets:
            await within(target.flush())
        for origin, publisher in enumerate(targets):
            for case in PAYLOAD_TABLE:
                publisher.dispatch_event(make_event("payloads", f"table-{origin}", case.make()))
        expected = [(case.name, case.expected) for case in PAYLOAD_TABLE]
        for recorder in recorders.values():
            await recorder.wait_for_count(len(expected))
            got = [
                (name, payload)
                for (name, _), payload in zip(expected, recorder.payloads, strict=True)
            ]
            assert got == expected, f"{recorder.name} received other values than the table"

    async def test_unsendable_payloads_refused_everywhere(self, bus: Any) -> None:
        targets = _distinct(await bus.open(3))
        recorder = Recorder()
        targets[-1].add_event_listener("payloads:refused", recorder)
        for target in targets:
            await within(target.flush())
        for n, publisher in enumerate(targets):
            for case in REFUSED_PAYLOADS:
                assert case.raises is not None
                with pytest.raises(case.raises):
                    publisher.dispatch_event(make_event("payloads", "refused", case.make()))
            # Nothing was sent: the sentinel is the first thing to arrive.
            publisher.dispatch_event(make_event("payloads", "refused", f"sentinel-{n}"))
        await recorder.wait_for_count(len(targets))
        assert sorted(recorder.payloads) == [f"sentinel-{n}" for n in range(len(targets))]
