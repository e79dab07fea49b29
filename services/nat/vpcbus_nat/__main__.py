"""``python -m vpcbus_nat``: run the NAT service (wiring only)."""

from __future__ import annotations

from vpcbus_runtime import early  # noqa: F401  (first of all: see its docstring)

# isort: split
from typing import TYPE_CHECKING

from nats.js import JetStreamContext

from vpcbus_nat import ovn
from vpcbus_nat.reconciler import NatReconciler
from vpcbus_runtime import service
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.settings import Settings, backend_from_env

if TYPE_CHECKING:
    from vpcbus_nat.kube import KubeNatReconciler


async def build(settings: Settings, _js: JetStreamContext) -> NatReconciler | KubeNatReconciler:
    if backend_from_env() == "kube-ovn":
        # Imported here: the kubernetes client is ~0.1 s of every start of the OVN backend.
        from vpcbus_nat.kube import KubeNatReconciler
        from vpcbus_runtime.kube import KubeClient

        try:
            return KubeNatReconciler(KubeClient.from_config())
        except PermanentError as exc:
            raise SystemExit(f"VPCBUS_BACKEND=kube-ovn: {exc}") from None
    nb = NbSession(settings.ovn_nb_db, tables=ovn.TABLES, refs=ovn.REFS)
    nb.warm_up()
    return NatReconciler(nb)


def main() -> None:
    backend_from_env()  # a bad value stops the service before it connects to anything
    service.main("nat", build)


if __name__ == "__main__":
    main()
