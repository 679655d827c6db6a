"""Pure rendering of felix's iptables chains as `Chain`/`Rule` values.

`names` (chain/ipset names, marks), `match` (one model rule -> matches), `policy`
(profile, policy and endpoint chains), `dispatch` (interface -> endpoint chain tree),
`static` (entry chains, failsafe, nat-outgoing). No I/O anywhere in this package.
"""
