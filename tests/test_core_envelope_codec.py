"""Envelope model, topic rules and codec (SPEC E1-E7, F2, F3)."""

from __future__ import annotations

import json

import pytest

from alkpubsub.core import control
from alkpubsub.core.codec import (
    FrameDecoder,
    decode_envelope,
    encode_envelope,
    pack_frames,
    prefix_frame,
)
from alkpubsub.core.envelope import Event, EventEnvelope, make_event, split_topic, validate_topic
from alkpubsub.core.errors import (
    DecodeError,
    FrameTooLargeError,
    FramingError,
    InvalidEnvelopeError,
    InvalidTopicError,
    ReservedTypeError,
)


def test_e1_envelope_is_frozen_with_default_payload() -> None:
    envelope = EventEnvelope(type="t", id="1")
    assert envelope.payload is None
    with pytest.raises(Exception, match="frozen"):
        envelope.type = "other"  # type: ignore[misc]


def test_e2_topic_is_type_colon_id() -> None:
    event = make_event("call.responded", "uuid:with:colons", {"a": 1})
    assert event.type == "call.responded:uuid:with:colons"
    assert event.detail.topic == event.type
    assert split_topic(event.type) == ("call.responded", "uuid:with:colons")


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "a\tb", "a\nb", "\x00", "\x7f", "a\u2003b"])
def test_e3_invalid_types(bad: str) -> None:
    with pytest.raises(InvalidTopicError):
        make_event(bad, "1")
    if ":" not in bad:  # in a topic, the first ':' ends the type
        with pytest.raises(ValueError, match="invalid event type"):
            validate_topic(f"{bad}:1")


def test_e3_ids_may_be_anything_but_must_be_strings() -> None:
    assert make_event("t", "").type == "t:"
    assert make_event("t", " spaced id ").detail.id == " spaced id "
    with pytest.raises(InvalidTopicError):
        make_event("t", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidTopicError):
        validate_topic("no-separator")


def test_e4_reserved_types_rejected() -> None:
    with pytest.raises(ReservedTypeError, match="reserved"):
        make_event("__subscribe", "")
    assert issubclass(ReservedTypeError, ValueError)


def test_event_type_must_match_envelope() -> None:
    with pytest.raises(InvalidTopicError):
        Event("a:2", EventEnvelope(type="a", id="1"))
    assert Event("a:1", EventEnvelope(type="a", id="1")).type == "a:1"


def test_encode_is_compact_and_roundtrips() -> None:
    envelope = EventEnvelope(type="t", id="1", payload={"k": [1, "ü"]})
    data = encode_envelope(envelope)
    assert json.loads(data) == {"type": "t", "id": "1", "payload": {"k": [1, "ü"]}}
    assert b" " not in data
    assert decode_envelope(data) == envelope
    assert decode_envelope(data.decode()) == envelope


def test_e6_encode_refuses_large_frames() -> None:
    envelope = EventEnvelope(type="t", id="1", payload="x" * 100)
    with pytest.raises(FrameTooLargeError) as info:
        encode_envelope(envelope, max_frame_bytes=50)
    assert info.value.limit == 50
    assert info.value.size > 100
    assert isinstance(info.value, ValueError)


def test_encode_rejects_non_json_payload_clearly() -> None:
    envelope = EventEnvelope(type="t", id="1", payload=object())
    with pytest.raises(InvalidEnvelopeError, match="JSON"):
        encode_envelope(envelope)


def test_e7_unknown_fields_ignored_and_never_emitted() -> None:
    envelope = decode_envelope(b'{"type":"t","id":"1","payload":2,"extra":{"x":1}}')
    assert envelope == EventEnvelope(type="t", id="1", payload=2)
    assert b"extra" not in encode_envelope(envelope)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1,2,3]",
        b'"string"',
        b"{}",
        b'{"type":"t"}',
        b'{"type":1,"id":"1"}',
        b'{"type":"t","id":2}',
        b'{"type":"","id":"1"}',
        b'{"type":"a:b","id":"1"}',
        b'{"type":"t","id":"\xff\xfe"}',
        b"\xff\xfe\xfd",
    ],
)
def test_b10_decode_errors_are_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_envelope(data)


def test_frame_decoder_handles_any_chunking() -> None:
    frames = [encode_envelope(make_event("t", str(i), "p" * i).detail) for i in range(50)]
    stream = pack_frames(frames)
    for chunk_size in (1, 3, 7, 64, len(stream)):
        decoder = FrameDecoder()
        out: list[bytes] = []
        for start in range(0, len(stream), chunk_size):
            out.extend(decoder.feed(stream[start : start + chunk_size]))
        assert out == frames
        assert decoder.at_frame_boundary()


def test_frame_decoder_reports_partial_frame() -> None:
    decoder = FrameDecoder()
    data = prefix_frame(b'{"type":"t","id":"1"}')
    assert decoder.feed(data[:-3]) == []
    assert not decoder.at_frame_boundary()
    assert decoder.buffered == len(data) - 3
    assert decoder.feed(data[-3:]) == [b'{"type":"t","id":"1"}']


def test_f2_zero_length_frame_is_a_violation() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FramingError, match="zero-length"):
        decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(FramingError, match="resynchronised"):
        decoder.feed(prefix_frame(b"{}"))


def test_f2_oversized_length_is_a_violation_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FramingError, match="101 bytes"):
        decoder.feed((101).to_bytes(4, "big"))


def test_pack_frames_is_one_buffer() -> None:
    assert pack_frames([b"ab", b"c"]) == b"\x00\x00\x00\x02ab\x00\x00\x00\x01c"
    assert prefix_frame(b"ab") == b"\x00\x00\x00\x02ab"


def test_control_subscription_topic_validation() -> None:
    assert control.subscription_topic(control.subscribe("a:b")) == "a:b"
    for payload in [None, {}, {"topic": ""}, {"topic": 3}, {"topic": "nocolon"}, "x"]:
        envelope = EventEnvelope.model_construct(type="__subscribe", id="", payload=payload)
        assert control.subscription_topic(envelope) is None
