"""Fixtures of the unit tests: an in-memory KV bucket, and IPAM's clock and address book."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.fakes import FakeKV
from tests.unit.ipam_fixtures import Clock, started
from vpcbus_ipam import addresses, reconciler
from vpcbus_ipam.addresses import AddressBook


@pytest.fixture
def kv() -> FakeKV:
    return FakeKV()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The address book's and the IPAM reconciler's time, which moves only when told."""
    fake = Clock()
    monkeypatch.setattr(addresses, "time", fake)
    monkeypatch.setattr(reconciler, "time", fake)
    return fake


@pytest.fixture
async def book(kv: FakeKV, clock: Clock) -> AsyncIterator[AddressBook]:
    """An address book (quarantine 60 s) over ``kv``, started: its mirror is loaded."""
    b = await started(kv)
    yield b
    await b.stop()
