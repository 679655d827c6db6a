"""Simulated hosts for tests, benchmarks and the demo: network namespaces, a fabric of
hosts joined by a bridge, and a real etcd they all reach.

Owns: `netns` (uniquely named namespaces, commands inside them, veth pairs, killing what
runs in them), `topology` (a fabric namespace with a bridge, host namespaces on it, etcd
inside the fabric, Calico nodes started with `calicoctl node run`), `etcd` (a real etcd
server on a free port with a throw-away data directory, optionally TLS or a unix socket)
and `wait` (polling with a deadline). Everything created is removed again, even when the
caller fails. Nothing here touches the machine's own routes, iptables or interfaces.

Leaves to others: what runs inside the hosts and what is checked. The shipped programs
(calicoctl, felix, confd) never import this package; tests, `bench/` and `demo/` do.
"""
