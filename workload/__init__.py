"""Workload plumbing: the one layer every way onto the network shares.

`calicoctl container`, the Docker libnetwork driver and the CNI plugin are thin adapters
over this package; it sits above the shared library (model, datastore, IPAM) and below
them. Modules:
- `gateway`: the link-local gateway scheme and the routes a workload needs (pure);
- `veth`: netlink steps on a workload's veth pair (create, move into a namespace,
  MTU, addresses, gateway neighbours and routes, delete), each usable on its own;
- `addresses`: address requests (`ipv4`, `ipv6`, a pool CIDR, an address) checked and
  assigned through IPAM, and released only while IPAM still records them as the
  workload's;
- `provision`: adding and removing a workload (or one address) with every step undone
  on failure, and removals that a retry finishes.

Nothing is imported here, so `import workload.gateway` stays cheap; the netlink steps
speak rtnetlink through the shared `rtnl` package (standard library only), never pyroute2.

Leaves to others: protocols (the adapters), allocation (`libcalico.ipam`), storage
(`libcalico.client`), host-side routes, proxy ARP and policy (felix).
"""
