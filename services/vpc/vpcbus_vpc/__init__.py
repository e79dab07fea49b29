"""vpcbus VPC: per project, a logical router, the project switch and the router's ports
on it and on the external network, with the default route to the external gateway.

Layers: :mod:`.desired` (pure) <- :mod:`.ovn` (the applier) <- :mod:`.reconciler`.
"""
