"""Felix's pure calculation: datastore updates -> desired dataplane state.

`parse` (key + JSON -> model value, invalid data skipped with one log line),
`policy_resolver` (which tiers/policies/profiles apply to each local endpoint),
`active_rules` (chains of the profiles/policies in use; ipset reference counts),
`membership` (tag/selector ipset members from every endpoint in the cluster),
`endpoints` (local endpoints -> endpoint/dispatch chains, routes, interfaces),
`recorder` (desired state and the delta since the last flush), `types` (the values
they exchange) and `graph` (`CalcGraph`: wires the parts, routes updates, flushes).
Nothing here does I/O.
"""
