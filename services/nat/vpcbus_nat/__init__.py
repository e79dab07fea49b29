"""vpcbus NAT: the project router's SNAT of its subnet to the default-gw EIP (later: FIPs
and load balancers). Layers: :mod:`.desired` (pure) <- :mod:`.ovn` <- :mod:`.reconciler`."""
