"""Felix's dataplane side: one owner per kernel table, each applied in one batch.

`types` is the contract with the pure calculation; `cmd` runs subprocesses; `iptables`,
`ipsets`, `routes` and `interfaces` hold desired state and apply it; `apply` holds the
set of owners and applies them in the one fixed order; `nftgen` tells whether anyone
changed the ruleset. Netlink (routes, neighbours, FDB, link events) and work inside a
namespace go through the project's one rtnetlink client, the `rtnl` package.
"""
