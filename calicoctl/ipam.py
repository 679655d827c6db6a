"""`calicoctl ipam` (placeholder, filled in below)."""

COMMANDS: list = []
