"""The consistency path and the process: Merkle anti-entropy, repair reports, full resync,
health, the daemon and its CLI, and `reconciler.client`, the failover client applications link.

Importing this package must stay cheap: `reconciler.client` is imported by applications.
"""
