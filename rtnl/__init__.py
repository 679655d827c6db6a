"""The project's one rtnetlink client: standard library only, shared by felix and workload.

Modules:
- `consts`: the kernel ABI numbers used here (a unit test checks each against pyroute2's);
- `codec`: pure encoding of requests and decoding of replies, the typed values read back
  (`Link`, `Route`, `Neighbour`, `FdbEntry`, `Address`) and the one error,
  `NetlinkError` (an `OSError` carrying the errno as `code`);
- `netns`: `netns_path` and `run_in_netns` (setns(2) on a short-lived thread);
- `sock`: `NetlinkSocket`, one NETLINK_ROUTE socket (in a namespace when asked, large
  receive buffer): pipelined batches with an errno per request, dumps, link events.

Why a package of its own, at the bottom of the layers beside `libcalico`: two users
need the same codec for opposite reasons. felix's dataplane owners write 10,000 routes
in one pipelined batch and dump links and routes fast (pyroute2's IPRoute costs ~0.7 ms
per route and ~0.45 ms per interface dumped); the workload steps run in a CNI plugin,
one process per call, where `import pyroute2` alone (~0.2-0.3 s) would eat the ADD's
whole budget. felix importing `workload` (a way-in's plumbing) or workload importing
`felix` would point an arrow sideways; `libcalico` owns no dataplane code. So `rtnl`
imports nothing of the project and nothing outside the standard library, and felix and
workload both import it (tests/unit/test_layers.py checks both).

Nothing is imported here: `import rtnl.sock` costs only what it uses.

Leaves to others: what to write and what is whose - felix's policy (protocol 80 routes,
which neighbours are felix's, resync) in `felix.dataplane`, the workload steps and
their errors in `workload.veth`; devices with many attributes (felix's VXLAN/IPIP
devices) go through pyroute2 where its cost does not matter.
"""
