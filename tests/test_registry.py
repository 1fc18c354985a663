"""Transport registry: entry points, URLs, config, helpful errors (SPEC §6)."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint
from typing import Any

import pytest

import alkpubsub.registry as registry
from alkpubsub import (
    MemoryEventTarget,
    MissingExtraError,
    UnknownTransportError,
    available_transports,
    get_transport,
    transport_from_config,
    transport_from_env,
    transport_from_url,
)


class ThirdPartyTarget(MemoryEventTarget):
    transport_name = "third-party"

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options


@pytest.fixture
def extra_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register entry points as a separately installed distribution would."""
    module = types.ModuleType("third_party_transport")
    module.ThirdPartyTarget = ThirdPartyTarget  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "third_party_transport", module)
    real = registry.entry_points

    def patched(*, group: str) -> list[EntryPoint]:
        found = list(real(group=group))
        if group == registry.ENTRY_POINT_GROUP:
            found += [
                EntryPoint("thirdparty", "third_party_transport:ThirdPartyTarget", group),
                EntryPoint("needs-extra", "module_that_is_not_installed:Target [fancy]", group),
            ]
        return found

    monkeypatch.setattr(registry, "entry_points", patched)


def test_memory_is_registered_by_entry_point() -> None:
    assert "memory" in available_transports()
    assert isinstance(get_transport("memory"), MemoryEventTarget)


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(UnknownTransportError, match=r"unknown transport 'nope'.*memory"):
        get_transport("nope")


def test_third_party_transport_needs_only_an_entry_point(extra_entry_points: None) -> None:
    assert "thirdparty" in available_transports()
    target = get_transport("thirdparty", colour="blue")
    assert isinstance(target, ThirdPartyTarget)
    assert target.options == {"colour": "blue"}


def test_missing_dependency_names_the_extra(extra_entry_points: None) -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'alkpubsub\[fancy\]'"):
        get_transport("needs-extra")


def test_transport_from_url_memory() -> None:
    assert isinstance(transport_from_url("memory://"), MemoryEventTarget)


def test_transport_from_url_errors() -> None:
    with pytest.raises(UnknownTransportError, match="scheme"):
        transport_from_url("gopher://x")
    with pytest.raises(UnknownTransportError, match="not a transport URL"):
        transport_from_url("memory")


def test_transport_from_config_and_env() -> None:
    assert isinstance(transport_from_config({"transport": "memory"}), MemoryEventTarget)
    assert isinstance(transport_from_config({"url": "memory://"}), MemoryEventTarget)
    with pytest.raises(UnknownTransportError, match="transport"):
        transport_from_config({})
    assert isinstance(transport_from_env(environ={}), MemoryEventTarget)
    assert isinstance(transport_from_env(environ={"ALKPUBSUB_URL": "memory://"}), MemoryEventTarget)
