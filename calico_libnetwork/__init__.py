"""The Docker libnetwork remote network driver `calico` and IPAM driver `calico-ipam`.

A thin adapter over the workload layer and the shared library: Docker's plugin calls
(JSON over HTTP on unix sockets in /run/docker/plugins) become IPAM assignments, veths
and workload endpoints. Modules:
- `api`: the protocols' names, capabilities and error type (pure);
- `request`: a request's fields, typed and validated before a call acts (pure);
- `state`: the driver's records in etcd (networks, joined endpoints, the profiles it
  created); nothing lives only in the driver's memory, so it can restart at any time;
- `engine`: what only the Docker engine knows (a network's name and labels);
- `network`: the NetworkDriver calls; `ipam`: the IpamDriver calls;
- `server`: the HTTP side (waitress, one unix socket per plugin name);
- `main`: the `calico-libnetwork` program.

docs/docker.md describes the behaviour and the choices made.

Leaves to others: addresses (`libcalico.ipam` through `workload.addresses`), veths and
endpoints (`workload`), routes, proxy ARP and policy (felix).
"""
