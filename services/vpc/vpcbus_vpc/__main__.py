"""``python -m vpcbus_vpc``: run the VPC service (wiring only)."""

from __future__ import annotations

from vpcbus_runtime import early  # noqa: F401  (first of all: see its docstring)

# isort: split
import ipaddress
import os
from typing import TYPE_CHECKING

from nats.js import JetStreamContext

from vpcbus_runtime import service
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.settings import Settings, backend_from_env
from vpcbus_vpc import ovn
from vpcbus_vpc.desired import Isolation
from vpcbus_vpc.reconciler import VpcReconciler

if TYPE_CHECKING:
    from vpcbus_vpc.kube import KubeVpcReconciler

DEFAULT_CHASSIS = "vpcbus-chassis-1"


def isolation_from_env() -> Isolation:
    """``VPCBUS_EGRESS_ISOLATION`` (true/false, default false) and ``VPCBUS_EGRESS_ALLOW``
    (comma-separated IPv4 CIDRs, the global allowlist); a bad value stops the service."""
    enabled = os.environ.get("VPCBUS_EGRESS_ISOLATION", "false").strip().lower()
    if enabled not in ("true", "false", "1", "0", "yes", "no", ""):
        raise SystemExit(f"VPCBUS_EGRESS_ISOLATION={enabled!r}: want true or false")
    allow = []
    for item in os.environ.get("VPCBUS_EGRESS_ALLOW", "").split(","):
        if item.strip():
            try:
                allow.append(str(ipaddress.IPv4Network(item.strip(), strict=True)))
            except ValueError as exc:
                raise SystemExit(f"VPCBUS_EGRESS_ALLOW: {item.strip()!r}: {exc}") from None
    return Isolation(enabled in ("true", "1", "yes"), tuple(allow))


async def build(settings: Settings, _js: JetStreamContext) -> VpcReconciler | KubeVpcReconciler:
    if backend_from_env() == "kube-ovn":
        # Imported here: the kubernetes client is ~0.1 s of every start of the OVN backend.
        from vpcbus_runtime.kube import KubeClient
        from vpcbus_vpc.kube import KubeVpcReconciler

        try:
            return KubeVpcReconciler(KubeClient.from_config())
        except PermanentError as exc:
            raise SystemExit(f"VPCBUS_BACKEND=kube-ovn: {exc}") from None
    chassis = os.environ.get("VPCBUS_GATEWAY_CHASSIS", DEFAULT_CHASSIS)
    nb = NbSession(settings.ovn_nb_db, tables=ovn.TABLES)
    nb.warm_up()
    return VpcReconciler(
        nb,
        chassis=chassis,
        isolation=isolation_from_env(),
    )


def main() -> None:
    backend_from_env()  # a bad value stops the service before it connects to anything
    service.main("vpc", build)


if __name__ == "__main__":
    main()
