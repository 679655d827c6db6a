"""`Datastore.list_keys` (keys only, paged, one revision) against real etcd."""

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
