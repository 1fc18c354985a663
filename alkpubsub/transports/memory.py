"""The in-process target: synchronous delivery, no serialization."""

from __future__ import annotations

from typing import Any, ClassVar

from ..core.envelope import Event, check_user_event, validate_topic
from ..core.errors import TargetClosedError
from ..core.listeners import Listener, ListenerErrorHandler, ListenerRegistry
from ..target import BaseEventTarget

__all__ = ["MemoryEventTarget"]


class MemoryEventTarget(BaseEventTarget):
    """Listeners run inside ``dispatch_event``; envelopes are passed by reference."""

    transport_name = "memory"
    url_schemes: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(self, *, on_listener_error: ListenerErrorHandler | None = None) -> None:
        super().__init__()
        self._registry = ListenerRegistry(
            on_listener_error=on_listener_error, schedule=self._scheduler
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryEventTarget:
        """``memory://``: a fresh in-process bus (the URL carries nothing else)."""
        return cls(**options)

    @property
    def listener_errors(self) -> int:
        return self._registry.listener_errors

    def add_event_listener(self, topic: str, listener: Listener | None) -> None:
        if self._closed or listener is None:
            return
        self._registry.add(validate_topic(topic), listener)

    def remove_event_listener(self, topic: str, listener: Listener | None) -> None:
        if not self._closed:
            self._registry.remove(topic, listener)

    def listener_count(self, topic: str) -> int:
        return self._registry.count(topic)

    def dispatch_event(self, event: Event) -> bool:
        if self._closed:
            raise TargetClosedError("target is closed")
        self._registry.dispatch(check_user_event(event))
        return True

    async def flush(self, timeout: float | None = None) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def aclose(self) -> None:
        if self._mark_closed():
            self._registry.clear()
