"""The libnetwork remote-driver and remote-IPAM protocols as this driver answers them.

Owns (pure, no I/O): the plugin names and what each socket implements, the
capabilities, the address spaces and pool ids Calico's IPAM hands out, the link-local
gateway placeholders Docker is given, the network options the driver accepts, and
`PluginError`, the one-sentence refusal every call answers with `{"Err": ...}`.

Leaves to others: the calls themselves (`calico_libnetwork.network`, `.ipam`) and HTTP
(`calico_libnetwork.server`).
"""

from __future__ import annotations

from libcalico.errors import CalicoError

NETWORK_PLUGIN = "calico"
IPAM_PLUGIN = "calico-ipam"
NETWORK_DRIVER = "NetworkDriver"
IPAM_DRIVER = "IpamDriver"

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"

# Scope local: each engine keeps its own networks (no cluster store needed); connectivity
# global: endpoints on every host reach each other (engines >= 17.06 read this).
NETWORK_CAPABILITIES = {"Scope": "local", "ConnectivityScope": "global"}
IPAM_CAPABILITIES = {"RequiresMACAddress": False, "RequiresRequestReplay": False}

LOCAL_ADDRESS_SPACE = "CalicoLocalAddressSpace"
GLOBAL_ADDRESS_SPACE = "CalicoGlobalAddressSpace"
ADDRESS_SPACES = (LOCAL_ADDRESS_SPACE, GLOBAL_ADDRESS_SPACE)

# Without --subnet a network draws from every Calico pool of its version: Docker is told
# the pool "0.0.0.0/0" (or "::/0") under these ids.
ANY_POOL = {4: "CalicoPoolIPv4", 6: "CalicoPoolIPv6"}
ANY_POOL_CIDR = {4: "0.0.0.0/0", 6: "::/0"}
# The gateway Docker records for a pool. A placeholder: it stops Docker from asking for a
# gateway address out of the pool; the real gateway comes with Join (169.254.1.1, fe80::1).
GATEWAY_DATA_KEY = "com.docker.network.gateway"
GATEWAY_PLACEHOLDER = {4: "0.0.0.0/0", 6: "::/0"}
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY_REQUEST = "com.docker.network.gateway"

GENERIC_OPTIONS = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"

ORCHESTRATOR = "libnetwork"  # the orchestrator id of the driver's workload endpoints
CONTAINER_IFPREFIX = "eth"  # Docker names the interface eth0, eth1, ...

BARE_NETWORK_ERROR = ("the calico network driver needs Calico IPAM: create the network "
                      "with `--ipam-driver calico-ipam` (Docker's default IPAM hands out "
                      "the same addresses on every host)")


class PluginError(CalicoError):
    """A call refused: the message is one sentence for the person running `docker`."""
