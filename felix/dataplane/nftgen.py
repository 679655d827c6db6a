"""The nf_tables ruleset generation: knowing, cheaply, that nobody changed the rules.

Owns: `RulesetGeneration`, which reads the generation id of this network namespace's
nf_tables ruleset (NFT_MSG_GETGEN on a NETLINK_NETFILTER socket, standard library only:
`import pyroute2` alone cost felix ~0.25 s of CPU and ~10 MB at every start, once per
host; docs/scale.md) and remembers the generation that
felix's own writes left (`known`). The kernel adds one to the generation on every
committed ruleset change, whoever makes it; one `iptables-restore` (one COMMIT) is one
change, a failed restore none. So when the generation still equals `known`, the iptables
tables are exactly what felix last wrote or read, and the periodic refresh can skip
reading them back: with 10,000 endpoints `iptables-save -t filter` alone costs ~4.5 s of
CPU (22,000 chains, 120,000 rules).

`known` is only ever set from an unbroken chain of evidence: a write is accounted for
when the generation moved by exactly the number of restores felix ran, starting either
from `known` or from a read-back of every table in the same apply. Anything else
(someone else's change in between, a read error) forgets it, and the next refresh reads
everything back.

Only meaningful with the nf_tables flavour of iptables (`iptables -V` says
"nf_tables"); with iptables-legacy `enabled` is False and every refresh reads back.

Leaves to others: the read-back and the writes themselves (`felix.dataplane.iptables`),
when to refresh (`felix.driver`, through `felix.dataplane.apply.Owners`).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

from rtnl.codec import HEADER, NetlinkError, attrs, error_code, messages
from rtnl.consts import NLM_F_REQUEST, NLMSG_ERROR
from rtnl.netns import run_in_netns

_log = logging.getLogger(__name__)
_U32 = 1 << 32
# linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h (checked
# against pyroute2 in tests/integration/test_felix_dataplane.py)
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID = 1
_NFGENMSG = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian)
_GETGEN = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN


class RulesetGeneration:
    def __init__(self, netns: str | None, enabled: bool = True) -> None:
        self.netns = netns
        self.enabled = enabled
        self.known: int | None = None

    def read(self) -> int | None:
        """The current generation id, or None (disabled, or it could not be read)."""
        if not self.enabled:
            return None
        try:
            return run_in_netns(self.netns, _read_generation)
        except OSError as exc:  # NetlinkError too  # unknown: refreshes read back
            _log.warning("cannot read the nf_tables generation (%s); refreshes will read "
                         "iptables back", exc)
            return None

    def unchanged(self) -> bool:
        """True when the ruleset is still the one felix's own writes left."""
        current = self.read()
        return current is not None and current == self.known

    def account(self, before: int | None, restores: int, read_back: bool) -> None:
        """After an apply that ran `restores` iptables restores: keep `known` only if the
        generation moved by exactly that, from `known` or from a full read-back."""
        after = self.read()
        if before is None or after is None:
            self.known = None
        elif (after - before) % _U32 == restores and (read_back or self.known == before):
            self.known = after
        else:
            self.known = None


def _read_generation() -> int:
    """NFT_MSG_GETGEN in this thread's network namespace: the ruleset's generation id.
    A fresh socket per read: a reused one was seen answering with a stale generation."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
        sock.send(HEADER.pack(HEADER.size + len(body), _GETGEN, NLM_F_REQUEST, 1, 0) + body)
        data = sock.recv(65536)
    except TimeoutError as exc:
        raise NetlinkError(errno.ETIMEDOUT, "NFT_MSG_GETGEN: no answer") from exc
    finally:
        sock.close()
    for msg_type, _flags, _seq, offset, end in messages(data):
        if msg_type == NLMSG_ERROR:
            code = error_code(data, offset)
            if code:
                raise NetlinkError(code, f"NFT_MSG_GETGEN: {errno.errorcode.get(code, code)}")
            continue
        if msg_type == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:  # the answer
            for attr_type, payload in attrs(data, offset + _NFGENMSG.size, end):
                if attr_type == NFTA_GEN_ID and len(payload) == 4:
                    return int(struct.unpack(">I", payload)[0])
    raise NetlinkError(errno.EPROTO, "NFT_MSG_GETGEN: no generation id in the reply")


def iptables_is_nft(version_output: str) -> bool:
    """`iptables -V` output -> whether it is the nf_tables flavour."""
    return "nf_tables" in version_output
