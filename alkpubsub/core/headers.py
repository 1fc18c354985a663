"""HTTP headers as a hub's hooks see them: case-insensitive, and faithful to
repeated headers (two ``X-Forwarded-For`` lines behind proxies are common)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Final

__all__ = ["SECRET_HEADERS", "Headers"]

#: Header values that never appear in a repr or a log line.
SECRET_HEADERS: Final = frozenset(
    {"authorization", "cookie", "proxy-authorization", "sec-websocket-protocol"}
)


class Headers(Mapping[str, str]):
    """Immutable, case-insensitive headers.

    ``headers[name]`` joins repeated values with ``", "`` (RFC 9110 §5.3);
    ``headers.get_all(name)`` returns each value. Iteration yields each name
    once, in first-seen order and spelling.
    """

    __slots__ = ("_items", "_joined")

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        self._items: tuple[tuple[str, str], ...] = tuple((str(k), str(v)) for k, v in pairs)
        joined: dict[str, tuple[str, list[str]]] = {}
        for name, value in self._items:
            entry = joined.setdefault(name.lower(), (name, []))
            entry[1].append(value)
        self._joined = {key: (name, ", ".join(values)) for key, (name, values) in joined.items()}

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._joined.values())

    def __len__(self) -> int:
        return len(self._joined)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (an empty list if absent)."""
        key = name.lower()
        return [value for item, value in self._items if item.lower() == key]

    def raw_items(self) -> tuple[tuple[str, str], ...]:
        """Every ``(name, value)`` line as received."""
        return self._items

    def __repr__(self) -> str:
        shown = {
            name: "<redacted>" if name.lower() in SECRET_HEADERS else value
            for name, value in self.items()
        }
        return f"Headers({shown!r})"
