"""The host monitor: probe engine (probes, per-domain state machine) and the daemon around it."""
