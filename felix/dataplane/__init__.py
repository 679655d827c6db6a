"""Felix's dataplane side: one owner per kernel table, each applied in one batch.

`types` is the contract with the pure calculation; `cmd` runs subprocesses; `iptables`,
`ipsets`, `routes` and `interfaces` hold desired state and apply it; `netlink` and
`netns` are the low-level helpers they share.
"""
