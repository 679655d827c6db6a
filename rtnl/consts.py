"""The kernel ABI numbers the rtnetlink codec uses, spelled out.

Owns: every protocol constant `rtnl` needs, with the header it comes from. They are
copied here, not taken from pyroute2, so that importing `rtnl` costs no pyroute2 (a
CNI plugin call is one process: `import pyroute2` alone is ~0.2-0.3 s). They are
kernel ABI and never change; tests/unit/test_rtnl_codec.py checks every one of them
against pyroute2's own value (and the few pyroute2 does not define against the kernel).

Leaves to others: encoding and decoding (`rtnl.codec`), the socket (`rtnl.sock`).
"""

from __future__ import annotations

# linux/netlink.h: message types and header flags
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLA_TYPE_MASK = 0x3FFF  # an attribute's type without NLA_F_NESTED, NLA_F_NET_BYTEORDER

# linux/rtnetlink.h: message types
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30

# linux/rtnetlink.h: multicast groups (bind() bitmask of the legacy groups)
RTMGRP_LINK = 0x1

# linux/rtnetlink.h: route types, protocols, scopes, tables, flags and attributes
RTN_UNSPEC = 0
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTPROT_UNSPEC = 0
RTPROT_BOOT = 3  # what `ip route add` writes
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255
RTNH_F_ONLINK = 0x4
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15

# linux/if_link.h, linux/veth.h: link attributes
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1

# linux/if.h: interface flags
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000

# linux/if_addr.h: address attributes and flags
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_F_NODAD = 0x02

# linux/neighbour.h: neighbour attributes, states and flags
NDA_DST = 1
NDA_LLADDR = 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NTF_PROXY = 0x08

# Not defined by pyroute2 (the test checks them against the kernel instead):
# linux/rtnetlink.h, asm-generic/socket.h, linux/sched.h
RT_TABLE_MAIN = 254
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000
