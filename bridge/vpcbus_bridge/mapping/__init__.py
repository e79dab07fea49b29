"""Pure mapping between Kubernetes and the bus (no I/O, no clock; an import contract says so).

:mod:`.objects` (watched kinds, slimmed objects) -> :mod:`.members` (objects to desired
events) -> :mod:`.events` (what to publish) and :mod:`.statuses` (services' statuses to
Kube status); :mod:`.teardown` (the bridge's finalizer) and :mod:`.autoeips` (EIp objects
of IPAM's own EIPs). Called by :mod:`vpcbus_bridge.bridging`.
"""
