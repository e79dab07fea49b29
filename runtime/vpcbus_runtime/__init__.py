"""The consumer edge shared by the four services.

It owns everything that touches NATS for a service: connecting, declaring streams and
consumers, recording desired state in KV, the per-key work queue, mapping reconcile
outcomes to ack / nak / term + dead letter, publishing status, and service discovery.
Services supply a :class:`~vpcbus_runtime.reconciling.Reconciler` and never call
``ack``/``nak``/``term`` themselves. :mod:`.ovn` is the one OVSDB session helper the OVN
services share.
"""
