"""`calicoctl policy trace`'s engine: why a flow is allowed or dropped, offline.

`snapshot` (the datastore at one revision and cheap lookups), `places` (the two ends of
a flow), `view` (felix's own calculation for one host, fed with what the flow depends
on), `trace` (the hooks a flow meets and what decided each direction, walking the
calculated chains with `felix.rules.evaluate`), `report` (text and JSON) and `main`
(the `calico-felix-trace` program that calicoctl runs). Nothing here touches the
dataplane.
"""
