"""`calicoctl diags` (placeholder, filled in below)."""

COMMANDS: list = []
