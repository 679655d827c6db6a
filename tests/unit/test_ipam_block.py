"""Unit tests of the pure IPAM block and handle logic."""

from __future__ import annotations

import json

import pytest

from libcalico.errors import ValidationError
from libcalico.ipam.block import (
    AddressInUse,
    AllocationBlock,
    IPAMHandle,
    block_cidr_for,
)


def test_new_block_is_empty_and_in_calico_shape() -> None:
    block = AllocationBlock.new("198.18.0.64/26", host="h1")
    data = block.to_json()
    assert data == {"cidr": "198.18.0.64/26", "affinity": "host:h1", "strict_affinity": False,
                    "allocations": [None] * 64, "unallocated": list(range(64)),
                    "attributes": []}
    assert block.is_empty() and block.free_count == 64 and block.host == "h1"
    again = AllocationBlock.from_json(json.loads(json.dumps(data)))
    assert again == block


def test_allocate_takes_in_order_and_records_attributes() -> None:
    block = AllocationBlock.new("198.18.0.0/26", host="h1")
    ips = block.allocate(3, "c1", {"pod": "a"}, host="h1")
    assert ips == ["198.18.0.0", "198.18.0.1", "198.18.0.2"]
    more = block.allocate(2, "c2", None, host="h1")
    assert more == ["198.18.0.3", "198.18.0.4"]
    assert block.allocated_count == 5
    assert block.attributes_of("198.18.0.1") == ("c1", {"pod": "a"})
    assert block.attributes_of("198.18.0.4") == ("c2", None)
    assert block.attributes_of("198.18.0.9") is None
    assert block.handle_counts() == {"c1": 3, "c2": 2}
    assert block.allocations[:6] == [0, 0, 0, 1, 1, None]


def test_full_block_allocates_what_is_left_then_nothing() -> None:
    block = AllocationBlock.new("198.18.0.0/26")
    assert len(block.allocate(60, "a")) == 60
    assert len(block.allocate(10, "b")) == 4
    assert block.allocate(1, "c") == []
    assert block.free_count == 0 and block.allocated_count == 64


def test_release_returns_released_handles_and_unknown() -> None:
    block = AllocationBlock.new("198.18.0.0/26")
    block.allocate(2, "a")
    block.allocate(2, "b")
    released, handles, unknown = block.release(["198.18.0.0", "198.18.0.2", "198.18.0.9"])
    assert released == ["198.18.0.0", "198.18.0.2"]
    assert handles == {"a": 1, "b": 1}
    assert unknown == ["198.18.0.9"]
    # Released ordinals go to the back of the free list: not reused at once.
    assert block.unallocated[-2:] == [0, 2]
    assert block.allocate(1, "c") == ["198.18.0.4"]


def test_release_drops_unused_attributes_and_reindexes() -> None:
    block = AllocationBlock.new("198.18.0.0/26")
    block.allocate(1, "a")
    block.allocate(1, "b")
    block.release(["198.18.0.0"])
    assert block.attributes == [{"handle_id": "b", "secondary": None}]
    assert block.allocations[1] == 0
    block.release_by_handle("b")
    assert block.is_empty()


def test_release_outside_block_is_an_error() -> None:
    block = AllocationBlock.new("198.18.0.0/26")
    with pytest.raises(ValidationError, match="198.18.1.1"):
        block.release(["198.18.1.1"])


def test_assign_specific_address_and_in_use() -> None:
    block = AllocationBlock.new("198.18.0.0/26")
    assert block.assign("198.18.0.10", "x", {"k": "v"}) == "198.18.0.10"
    assert 10 not in block.unallocated
    with pytest.raises(AddressInUse, match="198.18.0.10"):
        block.assign("198.18.0.10", "y")
    # auto-allocation skips the assigned ordinal
    ips = block.allocate(11, "z")
    assert "198.18.0.10" not in ips and ips[-1] == "198.18.0.11"


def test_borrowing_respects_strict_affinity() -> None:
    loose = AllocationBlock.new("198.18.0.0/26", host="h1", strict_affinity=False)
    assert loose.allocate(1, "a", host="h2") == ["198.18.0.0"]
    strict = AllocationBlock.new("198.18.0.64/26", host="h1", strict_affinity=True)
    assert strict.allocate(1, "a", host="h2") == []
    assert strict.allocate(1, "a", host="h1") == ["198.18.0.64"]
    orphan = AllocationBlock.new("198.18.0.128/26", strict_affinity=True)
    assert orphan.allocate(1, "a", host="h2") == ["198.18.0.128"]


def test_ordinals_ipv4_and_ipv6() -> None:
    v4 = AllocationBlock.new("198.18.0.192/26")
    assert v4.ordinal("198.18.0.255") == 63 and v4.address(63) == "198.18.0.255"
    v6 = AllocationBlock.new("fd00::40/122")
    assert v6.size == 64 and v6.version == 6
    assert v6.ordinal("fd00::7f") == 63 and v6.address(0) == "fd00::40"
    assert v6.allocate(2, "h") == ["fd00::40", "fd00::41"]
    with pytest.raises(ValidationError):
        v6.address(64)
    with pytest.raises(ValidationError):
        v4.ordinal("fd00::40")
    assert block_cidr_for("198.18.3.77", 26) == "198.18.3.64/26"
    assert block_cidr_for("fd00::1:ff", 122) == "fd00::1:c0/122"


def test_non_default_block_size() -> None:
    block = AllocationBlock.new("198.18.4.0/28")
    assert block.size == 16
    assert len(block.allocate(20, "a")) == 16


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(allocations=d["allocations"][:10]),
    lambda d: d.update(unallocated=d["unallocated"][1:]),
    lambda d: d["allocations"].__setitem__(5, 7),
    lambda d: d.update(affinity="node1"),
])
def test_from_json_rejects_inconsistent_blocks(mutate) -> None:
    data = AllocationBlock.new("198.18.0.0/26", host="h").to_json()
    mutate(data)
    with pytest.raises(ValueError):
        AllocationBlock.from_json(data)


def test_handle_counts_and_json() -> None:
    handle = IPAMHandle("c1")
    handle.add("198.18.0.0/26", 2)
    handle.add("fd00::40/122", 1)
    assert handle.total == 3
    assert handle.to_json() == {"id": "c1", "block": {"198.18.0.0/26": 2, "fd00::40/122": 1}}
    assert IPAMHandle.from_json(handle.to_json()) == handle
    handle.add("198.18.0.0/26", -2)
    handle.add("fd00::40/122", -1)
    assert handle.is_empty()


def test_allocation_times_are_recorded_released_and_round_trip() -> None:
    block = AllocationBlock.new("198.18.0.0/26", host="h1")
    a, b = block.allocate(2, "c1", None, "h1", now=1000)
    block.assign("198.18.0.9", "c2", now=1005)
    (unstamped,) = block.allocate(1, "c3", None, "h1")  # no time given: none recorded
    assert [block.allocated_at_of(ip) for ip in (a, b, "198.18.0.9", unstamped)] == \
        [1000, 1000, 1005, None]
    assert block.to_json()["allocated_at"] == {"0": 1000, "1": 1000, "9": 1005}
    copy = block.copy()
    block.release([a])
    assert block.allocated_at_of(a) is None and copy.allocated_at_of(a) == 1000
    again = AllocationBlock.from_json(json.loads(json.dumps(block.to_json())))
    assert again == block
    block.release([b, "198.18.0.9", unstamped])
    assert "allocated_at" not in block.to_json()  # empty: the Calico shape exactly


def test_bad_allocation_times_only_lose_the_age() -> None:
    block = AllocationBlock.new("198.18.0.0/26", host="h1")
    block.allocate(2, "c1", None, "h1", now=1000)
    data = block.to_json()
    data["allocated_at"] = {"0": "soon", "1": 1000, "5": 1000, "x": 1, "99": 1}
    parsed = AllocationBlock.from_json(data)  # still a valid block
    assert parsed.allocated_at == {1: 1000}  # free, unknown and non-integer entries dropped
    data["allocated_at"] = ["not", "a", "map"]
    assert AllocationBlock.from_json(data).allocated_at == {}
