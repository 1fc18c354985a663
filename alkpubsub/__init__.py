"""alkpubsub: one typed publish/subscribe interface over interchangeable transports."""

from ._version import __version__
from .core.envelope import Event, EventEnvelope, make_event
from .core.errors import (
    AlkPubSubError,
    BackpressureError,
    ConnectionRefusedByHubError,
    DecodeError,
    FrameTooLargeError,
    FramingError,
    HubRefusalError,
    InvalidEnvelopeError,
    InvalidTopicError,
    LinkClosedError,
    MissingExtraError,
    ReservedTypeError,
    SubscriptionOverflowError,
    TargetClosedError,
    UnknownTransportError,
)
from .core.listeners import Listener
from .pubsub import Envelope, PubSub, Subscription, create_pubsub
from .registry import (
    available_transports,
    get_transport,
    transport_from_config,
    transport_from_env,
    transport_from_url,
)
from .target import BaseEventTarget, TypedEventTarget, dispatch_all
from .transports.memory import MemoryEventTarget

__all__ = [
    "AlkPubSubError",
    "BackpressureError",
    "BaseEventTarget",
    "ConnectionRefusedByHubError",
    "DecodeError",
    "Envelope",
    "Event",
    "EventEnvelope",
    "FrameTooLargeError",
    "FramingError",
    "HubRefusalError",
    "InvalidEnvelopeError",
    "InvalidTopicError",
    "LinkClosedError",
    "Listener",
    "MemoryEventTarget",
    "MissingExtraError",
    "PubSub",
    "ReservedTypeError",
    "Subscription",
    "SubscriptionOverflowError",
    "TargetClosedError",
    "TypedEventTarget",
    "UnknownTransportError",
    "__version__",
    "available_transports",
    "create_pubsub",
    "dispatch_all",
    "get_transport",
    "make_event",
    "transport_from_config",
    "transport_from_env",
    "transport_from_url",
]
