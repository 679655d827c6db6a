"""Felix's pure calculation: datastore updates -> desired dataplane state.

`parse` (key + JSON -> model value, invalid data skipped with one log line),
`membership` (tag/selector ipset members from every endpoint in the cluster),
`graph` (`CalcGraph`: local endpoints, policies, profiles, pools -> `Changes`).
Nothing here does I/O.
"""
