"""Felix: the per-host dataplane agent.

`calc` (pure: datastore updates -> desired dataplane), `rules` (pure: chains as values),
`dataplane` (one owner per kernel table; `apply` holds them and their order), `driver`
(the loop), `endpoint_status` (what each endpoint's status is), `status`/`health`
(reporting), `config`, `main`.
"""
