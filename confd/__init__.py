"""confd: BIRD 2's configuration rendered from the datastore, validated and reloaded.

Owns: the BGP view of the datastore (`confd.view`), the per-host calculation of BGP
sessions and exported prefixes (`confd.calc`), rendering that into BIRD configuration
text with the Jinja2 templates in the top-level `templates/` directory (`confd.render`),
and putting a rendered configuration live safely (`confd.apply`). `confd.daemon` follows
the datastore and `confd.main` is the `calico-confd` command line.

Leaves to others: key names (`libcalico.keyspace`), etcd access (`libcalico.datastore`,
`libcalico.syncer`), IP allocation (`libcalico.ipam`), and running BIRD itself
(supervisord, or the tests' namespaces).
"""
