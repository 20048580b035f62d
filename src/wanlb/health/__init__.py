"""Health monitoring: the pure per-ISP state machine (machine), the probes (probes) and the probing loop (monitor)."""
