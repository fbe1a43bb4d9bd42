"""Hub names without the network fail at once (``_util.hub.offline_unless_reachable``), not after a minute of
retries, and behind a proxy the check stays out of the way."""

from __future__ import annotations

import socket

import pytest

from semlens._util import hub


@pytest.fixture(autouse=True)
def fresh_check():
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


def test_an_unreachable_hub_puts_the_hub_client_offline_for_the_call_only(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with hub.offline_unless_reachable():
        assert constants.is_offline_mode()
    assert not constants.is_offline_mode()
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    with hub.offline_unless_reachable():
        assert not constants.is_offline_mode()


def test_reachability_connects_once_to_the_endpoint_s_host_and_trusts_a_proxy(monkeypatch) -> None:
    asked = []

    def refuse(address, timeout):
        asked.append(address)
        raise OSError("unreachable")

    for name in hub.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example.org/hf")
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert not hub.hub_reachable() and not hub.hub_reachable()
    assert asked == [("mirror.example.org", 443)]  # asked once per process
    hub.hub_reachable.cache_clear()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.org:3128")
    assert hub.hub_reachable() and len(asked) == 1  # behind a proxy a direct connection says nothing: not tried
