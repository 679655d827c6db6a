"""`Datastore.list_keys` (keys only) and `list_items` (keys and values decoded from the
wire), paged at one revision, against real etcd."""

from __future__ import annotations

import pytest

import libcalico.datastore as datastore_module

pytestmark = pytest.mark.etcd


def test_list_keys_is_a_paged_snapshot(datastore, monkeypatch):
    keys = [f"/calico/v1/policy/profile/p{i:02d}/{part}" for i in range(12)
            for part in ("labels", "rules", "tags")]
    keys.append("/calico/v1/policy/profile/\u00e9t\u00e9/rules")
    for key in keys:
        datastore.put(key, "{}")
    datastore.put("/calico/v1/policy/profilez", "outside the prefix")
    kvs, revision = datastore.list("/calico/v1/policy/profile/")
    assert datastore.list_keys("/calico/v1/policy/profile/") == ([kv.key for kv in kvs],
                                                                revision)
    assert sorted(keys) == [kv.key for kv in kvs]
    # In pages of 5, all read at the first page's revision: a key written after the
    # snapshot was taken is not seen, one deleted afterwards still is.
    monkeypatch.setattr(datastore_module, "PAGE_SIZE", 5)
    datastore.put("/calico/v1/policy/profile/zz/rules", "{}")
    datastore.delete(keys[-1])
    assert datastore.list_keys("/calico/v1/policy/profile/", revision) == (
        [kv.key for kv in kvs], revision)
    now, now_rev = datastore.list_keys("/calico/v1/policy/profile/")
    assert now_rev > revision and now[-1] == "/calico/v1/policy/profile/zz/rules"
    assert keys[-1] not in now and len(now) == len(keys)
    assert datastore.list_keys("/calico/v1/nothing/") == ([], now_rev)


def test_list_items_decodes_the_wire_like_list(datastore, monkeypatch):
    """Keys and values read straight from the wire equal the protobuf-decoded list, with
    leases, empty values, non-ASCII text and large values, over several pages."""
    lease = datastore.grant_lease(60)
    for i in range(23):
        datastore.put(f"/calico/v1/host/h/k{i:02d}", "x" * (i * 300) + "\u00e9",
                      lease=lease.id if i % 3 == 0 else 0)
    datastore.put("/calico/v1/host/h/empty", "")
    datastore.put("/calico/v1/hostz", "outside the prefix")
    kvs, revision = datastore.list("/calico/v1/host/")
    want = [(kv.key, kv.value) for kv in kvs]
    assert datastore.list_items("/calico/v1/host/") == (want, revision)
    monkeypatch.setattr(datastore_module, "PAGE_SIZE", 4)
    datastore.put("/calico/v1/host/h/later", "written after the snapshot")
    assert datastore.list_items("/calico/v1/host/", revision) == (want, revision)
    items, now = datastore.list_items("/calico/v1/host/")
    assert now > revision and ("/calico/v1/host/h/later", "written after the snapshot") in items
    assert datastore.list_items("/calico/v1/nothing/") == ([], now)
