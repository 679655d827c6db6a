"""`calicoctl container` (placeholder, filled in below)."""

COMMANDS: list = []
