"""Felix: the per-host dataplane agent (calc, rules, dataplane, driver)."""
