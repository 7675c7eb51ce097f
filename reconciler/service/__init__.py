"""The process: the daemon that wires the parts and runs their lifecycle, its config, the
admin endpoint, Prometheus metrics and logging."""
