"""The README's main-job demo: a 3-host Calico cluster in network namespaces.

Owns: building the cluster with the real stack (etcd, `calicoctl node --runtime=none`
running felix, confd and BIRD in each simulated host; or, with `--runtime=docker`, the
same programs in container calico-node on a Docker engine per host), the pools, profile
and workloads made with `calicoctl`, waiting for BGP convergence, the ping/TCP matrix
before and after a deny rule, and tearing all of it down (at the end, on Ctrl-C, or
later with `--teardown` from the state file a `--keep` run leaves behind).

Modules: `cluster` (the command and its steps), `matrix` (pure: expected outcomes,
tables, summaries), `state` (the state file and teardown from it), `agent` (a stand-alone
script run inside workload namespaces: listeners and probes).

Leaves to others: the namespaces, etcd and node start-up themselves
(`netsim.topology`, reused as is), and everything `calicoctl` does.
"""
