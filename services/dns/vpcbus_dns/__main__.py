"""``python -m vpcbus_dns``: run the DNS service (wiring only)."""

from __future__ import annotations

from vpcbus_runtime import early  # noqa: F401  (first of all: see its docstring)

# isort: split
import ipaddress
import os
from typing import TYPE_CHECKING

from nats.js import JetStreamContext

from vpcbus_dns import ovn
from vpcbus_dns.reconciler import DnsReconciler
from vpcbus_runtime import service
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.settings import Settings, backend_from_env

if TYPE_CHECKING:
    from vpcbus_dns.kube import KubeDnsReconciler


def upstream_from_env() -> tuple[str, ...]:
    """``VPCBUS_DNS_UPSTREAM``: comma-separated IPv4 addresses of the platform's resolvers,
    which answer every name outside the project zones (none: workloads resolve the zone only,
    at the project router). A bad value stops the service."""
    out = []
    for item in os.environ.get("VPCBUS_DNS_UPSTREAM", "").split(","):
        if item.strip():
            try:
                out.append(str(ipaddress.IPv4Address(item.strip())))
            except ValueError as exc:
                raise SystemExit(f"VPCBUS_DNS_UPSTREAM: {item.strip()!r}: {exc}") from None
    return tuple(out)


async def build(settings: Settings, _js: JetStreamContext) -> DnsReconciler | KubeDnsReconciler:
    if backend_from_env() == "kube-ovn":
        # Imported here: the kubernetes client is ~0.1 s of every start of the OVN backend.
        from vpcbus_dns.kube import KubeDnsReconciler
        from vpcbus_runtime.kube import KubeClient

        try:
            return KubeDnsReconciler(KubeClient.from_config())
        except PermanentError as exc:
            raise SystemExit(f"VPCBUS_BACKEND=kube-ovn: {exc}") from None
    nb = NbSession(settings.ovn_nb_db, tables=ovn.TABLES, refs=ovn.REFS)
    nb.warm_up()
    return DnsReconciler(nb, upstream=upstream_from_env())


def main() -> None:
    backend_from_env()  # a bad value stops the service before it connects to anything
    service.main("dns", build)


if __name__ == "__main__":
    main()
