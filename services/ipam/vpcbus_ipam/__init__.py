"""vpcbus IPAM: admits projects, reserves their subnet's special addresses, and allocates
external addresses (EIPs) from the configured pools, durably and uniquely, in JetStream KV.

Layers: :mod:`.pools` (pure pool and reservation math) <- :mod:`.addresses` (the KV-backed
address book) <- :mod:`.reconciler` <- ``__main__``.
"""
