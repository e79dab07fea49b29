"""``vpcbus_runtime.ovn.has_member`` / ``ensure_member`` on real python-ovs rows (a real NB
``ovsdb-server``): the fast path (the committed datum) and the slow one (pending changes in
the transaction, or other projects' pending inserts and removals on the same column in a
group commit) agree with reading the column, so a port is attached once and only once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vpcbus.embedded.ovn import OvnCentral
from vpcbus_runtime import ovn as nbdb
from vpcbus_runtime.ovn import NbSession, Txn

pytestmark = [pytest.mark.connected]


def _switch(api: Any) -> Any:
    ls = nbdb.find(api, "Logical_Switch", "mb-sw")
    assert ls is not None
    return ls


async def test_membership_agrees_with_the_column_committed_or_pending(nb: NbSession) -> None:
    def build(api: Any, txn: Txn) -> None:
        ls = nbdb.insert(api, txn, "Logical_Switch", name="mb-sw")
        other = nbdb.insert(api, txn, "Logical_Switch", name="mb-other")  # keeps mb-p2 alive
        for i in range(3):
            port = nbdb.insert(api, txn, "Logical_Switch_Port", name=f"mb-p{i}")
            assert nbdb.ensure_member(ls if i < 2 else other, "ports", port)  # slow path

    await nb.transact(build)

    def check(api: Any, txn: Txn) -> list[tuple[str, bool, bool]]:
        ls = _switch(api)
        seen = []
        for i in range(3):
            port = nbdb.find(api, "Logical_Switch_Port", f"mb-p{i}")
            assert port is not None
            slow = any(m.uuid == port.uuid for m in ls.ports)
            seen.append((port.name, nbdb.has_member(ls, "ports", port.uuid), slow))
        return seen

    assert await nb.transact(check) == [
        ("mb-p0", True, True), ("mb-p1", True, True), ("mb-p2", False, False),
    ]  # fmt: skip

    def attach_the_third(api: Any, txn: Txn) -> tuple[bool, bool, bool]:
        ls = _switch(api)
        port = nbdb.find(api, "Logical_Switch_Port", "mb-p2")
        assert port is not None
        first = nbdb.ensure_member(ls, "ports", port)  # committed datum: missing
        pending = nbdb.has_member(ls, "ports", port.uuid)  # now a pending insert
        again = nbdb.ensure_member(ls, "ports", port)
        return first, pending, again

    assert await nb.transact(attach_the_third) == (True, True, False)

    def removed(api: Any, txn: Txn) -> bool:
        ls = _switch(api)
        port = nbdb.find(api, "Logical_Switch_Port", "mb-p0")
        assert port is not None
        ls.delvalue("ports", port)
        return nbdb.has_member(ls, "ports", port.uuid)  # a pending removal

    assert await nb.transact(removed) is False
    names = await nb.read(lambda api: sorted(p.name for p in _switch(api).ports))
    assert names == ["mb-p1", "mb-p2"]

    def others_pending(api: Any, txn: Txn) -> list[tuple[str, bool, bool]]:
        """Another project's pending insert and removal on the same column (a group commit):
        the committed datum, corrected by them, still agrees with reading the column."""
        ls = _switch(api)
        new = nbdb.insert(api, txn, "Logical_Switch_Port", name="mb-p3")
        ls.addvalue("ports", new)
        gone = nbdb.find(api, "Logical_Switch_Port", "mb-p2")  # still on mb-other
        assert gone is not None
        ls.delvalue("ports", gone)
        seen = []
        for name in ("mb-p1", "mb-p2", "mb-p3"):
            port = nbdb.find(api, "Logical_Switch_Port", name)
            assert port is not None
            slow = any(m.uuid == port.uuid for m in ls.ports)
            seen.append((name, nbdb.has_member(ls, "ports", port.uuid), slow))
        return seen

    assert await nb.transact(others_pending) == [
        ("mb-p1", True, True), ("mb-p2", False, False), ("mb-p3", True, True),
    ]  # fmt: skip

    def removed_then_added(api: Any, txn: Txn) -> tuple[bool, bool]:
        """python-ovs sends a row's removes before its inserts: the port stays."""
        ls = _switch(api)
        port = nbdb.find(api, "Logical_Switch_Port", "mb-p1")
        assert port is not None
        ls.delvalue("ports", port)
        ls.addvalue("ports", port)
        return nbdb.has_member(ls, "ports", port.uuid), any(m.uuid == port.uuid for m in ls.ports)

    assert await nb.transact(removed_then_added) == (True, True)
    names = await nb.read(lambda api: sorted(p.name for p in _switch(api).ports))
    assert names == ["mb-p1", "mb-p3"]


async def test_two_sessions_to_two_databases_stay_apart(
    ovn: OvnCentral, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """ovsdbapp keeps its connection in a class attribute; each NbSession has its own, so a
    second session (another NB, or one opened after the first closed) sees its own rows."""
    other = OvnCentral(tmp_path_factory.mktemp("other-ovn"))
    other.start()
    first, second = NbSession(ovn.nb_db), NbSession(other.nb_db)
    try:

        def add(name: str) -> Callable[[Any, Txn], None]:
            return lambda api, txn: nbdb.insert(api, txn, "Logical_Switch", name=name) and None

        await first.transact(add("in-first"))
        await second.transact(add("in-second"))

        def switches(api: Any) -> set[str]:
            return {ls.name for ls in nbdb.rows(api, "Logical_Switch")}

        assert "in-second" not in await first.read(switches)
        assert await second.read(switches) == {"in-second"}
    finally:
        first.close()
        second.close()
        other.stop()
