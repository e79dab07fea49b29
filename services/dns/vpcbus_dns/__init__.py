"""vpcbus DNS: a project's zone as OVN native DNS records, attached only to the project's
switch, so only the project's own workloads can resolve it.
Layers: :mod:`.desired` (pure) <- :mod:`.ovn` <- :mod:`.reconciler`."""
