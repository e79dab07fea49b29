"""``python -m vpcbus_dns``: run the DNS service (wiring only)."""

from __future__ import annotations

from nats.js import JetStreamContext

from vpcbus_dns import ovn
from vpcbus_dns.reconciler import DnsReconciler
from vpcbus_runtime import service
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.settings import Settings


async def build(settings: Settings, _js: JetStreamContext) -> DnsReconciler:
    return DnsReconciler(NbSession(settings.ovn_nb_db, tables=ovn.TABLES))


def main() -> None:
    service.main("dns", build)


if __name__ == "__main__":
    main()
