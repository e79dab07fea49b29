"""vpcbus projects as Kube-OVN manifests: pure functions returning plain-dict objects.

One module per slice, each owned by the service that would apply it (with its own field
manager and the ownership labels of :mod:`.meta`): :mod:`.vpc` (``Vpc``, ``Subnet``),
:mod:`.nat` (``OvnEip``, ``OvnSnatRule``, ``OvnFip``, ``OvnDnatRule``), :mod:`.dns`
(``VpcDns``, ``<svc>-ext`` Service and Endpoints). :func:`manifests` is all of them in
apply order; :data:`DELETION_ORDER` is the order to delete them in. They express the same
network the services' OVN backends build (``vpcbus_vpc.desired``, ``vpcbus_nat.desired``).
"""

from vpcbus_kubeovn.meta import (
    APPLY_ORDER,
    DELETION_ORDER,
    Manifest,
    apply_sorted,
    deletion_sorted,
)
from vpcbus_kubeovn.project import manifests

__all__ = [
    "APPLY_ORDER",
    "DELETION_ORDER",
    "Manifest",
    "apply_sorted",
    "deletion_sorted",
    "manifests",
]
