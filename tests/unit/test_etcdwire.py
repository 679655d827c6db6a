"""libcalico.etcdwire against protobuf's own encoding of etcd's messages (etcd3's
generated modules): requests byte for byte, responses read back field for field."""

from __future__ import annotations

import pytest
from etcd3.etcdrpc import rpc_pb2

from libcalico import etcdwire


@pytest.mark.parametrize("kw", [
    {"key": b"/calico/v1/host/"},
    {"key": b"/a", "range_end": b"/b", "revision": 123456789, "limit": 10000},
    {"key": b"/" + b"k" * 300, "range_end": b"\0", "keys_only": True, "revision": 1},
])
def test_range_request_is_protobufs(kw):
    assert etcdwire.encode_range_request(**kw) == rpc_pb2.RangeRequest(**kw).SerializeToString()


def test_authenticate_request_and_token():
    assert etcdwire.encode_authenticate_request("calico", "s\u00e9cret") == \
        rpc_pb2.AuthenticateRequest(name="calico", password="s\u00e9cret").SerializeToString()
    answer = rpc_pb2.AuthenticateResponse(token="tok.123")
    answer.header.revision = 77
    assert etcdwire.message_field(answer.SerializeToString(), 2) == b"tok.123"


def test_split_range_and_one_keyvalue():
    resp = rpc_pb2.RangeResponse(more=True, count=3)
    resp.header.revision = 2 ** 40
    values = [b"", "\u00e9".encode() * 100, b"x" * 70000]
    for i, value in enumerate(values):
        resp.kvs.add(key=f"/calico/v1/host/h{i}/".encode() + b"k" * (i * 90), value=value,
                     create_revision=i + 1, mod_revision=2 ** 35 + i, version=i, lease=i * 7)
    data = resp.SerializeToString()
    revision, more, kvs = etcdwire.split_range(data)
    assert (revision, more) == (2 ** 40, True)
    assert [(etcdwire.kv_key(kv), etcdwire.kv_value(kv)) for kv in kvs] == \
        [(kv.key, kv.value) for kv in resp.kvs]
    assert etcdwire.decode_range(data) == (revision, more, [(kv.key, kv.value)
                                                            for kv in resp.kvs])
    assert etcdwire.split_range(rpc_pb2.RangeResponse().SerializeToString()) == (0, False, [])
