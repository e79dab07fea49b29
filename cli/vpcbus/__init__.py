"""vpcbus: the command-line interface and the embedded development stack.

:mod:`.client` talks to the bus, :mod:`.stack` runs ``vpcbus up``, :mod:`.tracing` explains
``ovn-trace``, :mod:`.embedded` starts nats-server, OVN and a local chassis. The CLI never
imports a service: it publishes the same events any NATS client could.
"""
