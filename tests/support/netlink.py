"""A real netlink socket that counts the requests it sent (felix dataplane tests assert
that a no-op resync sends none)."""

from __future__ import annotations

from collections.abc import Sequence

from rtnl.codec import Request
from rtnl.sock import NetlinkSocket, Reply


class CountingNetlink(NetlinkSocket):
    """`NetlinkSocket` in `netns`; `requests` counts what `request_batch` sent."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns)
        self.requests = 0

    def request_batch(self, requests: Sequence[Request]) -> list[tuple[int, list[Reply]]]:
        self.requests += len(requests)
        return super().request_batch(requests)
