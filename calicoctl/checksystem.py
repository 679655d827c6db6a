"""`calicoctl checksystem` (placeholder, filled in below)."""

COMMANDS: list = []
