"""`calicoctl status` (placeholder, filled in below)."""

COMMANDS: list = []
