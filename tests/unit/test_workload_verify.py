"""workload.verify.compare, pure: an endpoint against interface states given as values."""

from __future__ import annotations

from libcalico.model import WorkloadEndpoint
from workload.verify import compare
from workload.veth import InterfaceState

EP = WorkloadEndpoint("h", "cni", "w", "e", name="cali0123456789a", mac="02:00:00:00:00:01",
                      ipv4_nets=("198.18.0.5/32",), ipv6_nets=("fd00::5/128",),
                      ipv4_gateway="169.254.1.1", ipv6_gateway="fe80::1")
HOST_MAC = "ee:ee:ee:ee:ee:ee"
HOST = InterfaceState("cali0123456789a", HOST_MAC, True, 1500, (), (), ())
GOOD = InterfaceState(
    "eth0", "02:00:00:00:00:01", True, 1500, ("198.18.0.5", "fd00::5"),
    (("0.0.0.0/0", "169.254.1.1"), ("::/0", "fe80::1")),
    (("169.254.1.1", HOST_MAC, True), ("fe80::1", HOST_MAC, True)))


def test_a_workload_as_recorded_has_no_problems() -> None:
    assert compare(EP, GOOD, HOST, "eth0") == []


def test_each_difference_is_named() -> None:
    bad = InterfaceState("eth0", "02:00:00:00:00:02", False, 1500, ("198.18.0.9",),
                         (("0.0.0.0/0", "169.254.1.1"),),
                         (("169.254.1.1", HOST_MAC, False),))
    problems = compare(EP, bad, None, "eth0")
    assert problems == [
        "host interface cali0123456789a does not exist",
        "interface eth0 is down",
        "interface eth0 has MAC 02:00:00:00:00:02, the endpoint 02:00:00:00:00:01",
        "interface eth0 lacks address(es) 198.18.0.5, fd00::5",
        "interface eth0 has address(es) 198.18.0.9 that the endpoint does not list",
        "interface eth0 has no default route via fe80::1",
    ]
    inactive = WorkloadEndpoint(**{**EP.__dict__, "state": "inactive"})
    assert compare(inactive, GOOD, HOST, "eth0") == ["endpoint e is inactive"]
    assert compare(EP, None, HOST, "eth0") == [
        "interface eth0 does not exist in the workload's namespace"]
    wrong_mac = InterfaceState(**{**GOOD.__dict__, "neighbours": (
        ("169.254.1.1", "aa:aa:aa:aa:aa:aa", True), ("fe80::1", HOST_MAC, True))})
    assert compare(EP, wrong_mac, HOST, "eth0") == [
        f"interface eth0 has no permanent neighbour entry for 169.254.1.1 at {HOST_MAC}"]
