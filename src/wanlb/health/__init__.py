"""Health monitoring: the pure state machine (probes and the monitor loop come with the health issue)."""
