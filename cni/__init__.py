"""The CNI adapter: the `calico` and `calico-ipam` plugins for CNI runtimes (podman,
Kubernetes and Mesos through CNI), spec versions 0.3.0 to 1.1.0.

A thin shell over the workload layer: it parses the CNI call, validates it into the
project's values and lets `workload.provision` do the work that `calicoctl container`
and the Docker driver do too. Modules:
- `spec`: the protocol as pure values (versions, environment, CNI_ARGS, results,
  errors and their codes);
- `config`: the network configuration and the attachment's identity (pure);
- `context`: one call's inputs and lazily opened clients;
- `calico`: the `calico` plugin's ADD, DEL, CHECK, GC and STATUS;
- `ipam`: the `calico-ipam` plugin, and delegation to other IPAM plugins (host-local);
- `main`: the executables' entry points (total: every failure is a CNI error object).

Nothing is imported here, so the executables start with only what their command needs.

Leaves to others: the plumbing (`workload`), allocation and storage (`libcalico`),
policy and routes on the host (felix), installing the executables (`calicoctl cni
install`).
"""
