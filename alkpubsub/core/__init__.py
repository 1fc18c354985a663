"""The sans-I/O core: pure logic, no sockets, no event loop."""

from .codec import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameDecoder,
    decode_envelope,
    encode_envelope,
    pack_frames,
    prefix_frame,
)
from .envelope import Event, EventEnvelope, make_event, split_topic, validate_topic, validate_type
from .errors import (
    AlkPubSubError,
    BackpressureError,
    DecodeError,
    FrameTooLargeError,
    FramingError,
    InvalidEnvelopeError,
    InvalidTopicError,
    MissingExtraError,
    ReservedTypeError,
    SubscriptionOverflowError,
    TargetClosedError,
    UnknownTransportError,
)
from .forwarder import SubscriptionForwarder
from .listeners import Listener, ListenerRegistry
from .router import HubConnection, HubRouter, Peer, PublishRequest, SubscribeRequest

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "AlkPubSubError",
    "BackpressureError",
    "DecodeError",
    "Event",
    "EventEnvelope",
    "FrameDecoder",
    "FrameTooLargeError",
    "FramingError",
    "HubConnection",
    "HubRouter",
    "InvalidEnvelopeError",
    "InvalidTopicError",
    "Listener",
    "ListenerRegistry",
    "MissingExtraError",
    "Peer",
    "PublishRequest",
    "ReservedTypeError",
    "SubscribeRequest",
    "SubscriptionForwarder",
    "SubscriptionOverflowError",
    "TargetClosedError",
    "UnknownTransportError",
    "decode_envelope",
    "encode_envelope",
    "make_event",
    "pack_frames",
    "prefix_frame",
    "split_topic",
    "validate_topic",
    "validate_type",
]
