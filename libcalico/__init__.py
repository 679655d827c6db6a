"""libcalico: the library every part of the project shares.

It owns the resource model (typed, validated values), the etcd keyspace (every key
the project uses), the datastore client (etcd3 wrapper, compare-and-swap, syncer)
and IPAM. It deliberately owns no dataplane code: felix, confd and calicoctl sit on
top of it and nothing here imports them.
"""

__version__ = "0.1.0"
