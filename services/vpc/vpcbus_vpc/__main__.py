"""``python -m vpcbus_vpc``: run the VPC service (wiring only)."""

from __future__ import annotations

import os

from nats.js import JetStreamContext

from vpcbus_runtime import service
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.settings import Settings
from vpcbus_vpc import ovn
from vpcbus_vpc.reconciler import VpcReconciler

DEFAULT_CHASSIS = "vpcbus-chassis-1"


async def build(settings: Settings, _js: JetStreamContext) -> VpcReconciler:
    chassis = os.environ.get("VPCBUS_GATEWAY_CHASSIS", DEFAULT_CHASSIS)
    return VpcReconciler(NbSession(settings.ovn_nb_db, tables=ovn.TABLES), chassis=chassis)


def main() -> None:
    service.main("vpc", build)


if __name__ == "__main__":
    main()
