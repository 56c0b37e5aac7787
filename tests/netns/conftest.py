"""Fixtures for tests that build network namespaces (marker `netns`).

Without root, `ip` or `nft` these tests skip and say why; with BASCULE_REQUIRE_NETNS=1 (CI) a
missing prerequisite fails them instead, so CI cannot pass by skipping. Every testbed is removed
in a `finally`, whatever the test did.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from bascule.packet import testbed
from bascule.packet.testbed import Testbed


def _missing() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "netns tests need root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"netns tests need the {tool!r} command ({package})"
    return None


@pytest.fixture(autouse=True)
def _netns_prerequisites() -> None:
    """Skip (or, under BASCULE_REQUIRE_NETNS=1, fail) when the machine cannot run these tests."""
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("BASCULE_REQUIRE_NETNS") == "1":
        pytest.fail(f"BASCULE_REQUIRE_NETNS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def bed() -> Iterator[Testbed]:
    """A fresh testbed (client, net, lb, rs1, rs2), removed even when the test fails."""
    made = testbed.up()
    try:
        yield made
    finally:
        testbed.down(testbed.recorded_or(made))
