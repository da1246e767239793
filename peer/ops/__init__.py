"""Operating a fleet: deployment plans, systemd units, broker files, admission, status."""
