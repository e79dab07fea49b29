"""``python -m vpcbus_ipam``: run the IPAM service (wiring only)."""

from __future__ import annotations

from vpcbus_runtime import early  # noqa: F401  (first of all: see its docstring)

# isort: split
import asyncio
import os

from nats.js import JetStreamContext

from vpcbus_ipam.addresses import AddressBook
from vpcbus_ipam.pools import load_pools
from vpcbus_ipam.reconciler import IpamReconciler, Policy
from vpcbus_ipam.usage import publish_pool_usage
from vpcbus_proto import subjects
from vpcbus_runtime import bus, service
from vpcbus_runtime.settings import Settings


async def build(settings: Settings, js: JetStreamContext) -> IpamReconciler:
    kv = await bus.ensure_bucket(js, subjects.IPAM_ADDRESSES_BUCKET)
    book = AddressBook(kv, quarantine=float(os.environ.get("VPCBUS_IP_QUARANTINE_SECONDS", "60")))
    await book.start()
    policy = Policy(
        pools=load_pools(os.environ.get("VPCBUS_POOLS")),
        allow_public_projects=os.environ.get("VPCBUS_ALLOW_PUBLIC_PROJECTS", "false").lower()
        in ("1", "true", "yes"),
        default_network=os.environ.get("VPCBUS_DEFAULT_EXTERNAL_NETWORK", "cloud"),
    )
    reconciler = IpamReconciler(book, policy)
    reconciler.background.append(asyncio.create_task(publish_pool_usage(js, reconciler)))
    return reconciler


def main() -> None:
    service.main("ipam", build)


if __name__ == "__main__":
    main()
