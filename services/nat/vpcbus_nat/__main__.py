"""``python -m vpcbus_nat``: run the NAT service (wiring only)."""

from __future__ import annotations

from nats.js import JetStreamContext

from vpcbus_nat import ovn
from vpcbus_nat.reconciler import NatReconciler
from vpcbus_runtime import service
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.settings import Settings


async def build(settings: Settings, _js: JetStreamContext) -> NatReconciler:
    return NatReconciler(NbSession(settings.ovn_nb_db, tables=ovn.TABLES))


def main() -> None:
    service.main("nat", build)


if __name__ == "__main__":
    main()
