"""``python -m vpcbus_ipam``: run the IPAM service (wiring only)."""

from __future__ import annotations

import os

from nats.js import JetStreamContext

from vpcbus_ipam.addresses import AddressBook
from vpcbus_ipam.pools import load_pools
from vpcbus_ipam.reconciler import IpamReconciler, Policy
from vpcbus_proto import subjects
from vpcbus_runtime import bus, service
from vpcbus_runtime.settings import Settings


async def build(settings: Settings, js: JetStreamContext) -> IpamReconciler:
    kv = await bus.ensure_bucket(js, subjects.IPAM_ADDRESSES_BUCKET)
    book = AddressBook(kv)
    await book.start()
    policy = Policy(
        pools=load_pools(os.environ.get("VPCBUS_POOLS")),
        allow_public_projects=os.environ.get("VPCBUS_ALLOW_PUBLIC_PROJECTS", "false").lower()
        in ("1", "true", "yes"),
    )
    return IpamReconciler(book, policy)


def main() -> None:
    service.main("ipam", build)


if __name__ == "__main__":
    main()
