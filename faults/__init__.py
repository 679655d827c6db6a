"""The reliability suite's tooling: break a running cluster and measure what it costs.

Owns: `cluster` (a 3-host cluster with workloads, built with calicoctl as an operator
would, and handles on each node's programs), `traffic` (a 10 ms ping and a TCP stream per
workload pair, and the packets lost and longest gap they saw), `agent` (the probes run
inside workloads), `converge` (convergence, canaries, `ipam check`, felix's dataplane
compared with a fresh felix's, leak inventory), `matrix` (the faults), `soak` (the churn
soak) and `__main__` (`python -m faults`, behind `scripts/faults.sh`: prints JSON).

Leaves to others: simulated hosts and etcd (`netsim`), the tests that assert on the
figures (tests/reliability). Like `netsim`, `demo` and `bench`, the shipped programs
never import it.
"""
