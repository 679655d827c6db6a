"""etcd's Range response read straight from the protobuf wire format.

Owns: `decode_range(data)` -> (revision, more, [(key, value)]): the header's revision,
the `more` flag and each KeyValue's key and value bytes, every other field skipped by
its wire type. `libcalico.datastore.Datastore.list_items` uses it for reads of many
keys: the pure-Python protobuf runtime that protobuf<4 gives on Python 3.11 builds a
message object per key and spends several times longer doing so (a 13,000-key range:
~0.5 s against ~0.1 s here).

Leaves to others: the call itself, paging and errors (`libcalico.datastore`). Pure.
"""

from __future__ import annotations

# etcdserverpb.RangeResponse: header = 1, kvs = 2 (repeated KeyValue), more = 3, count = 4.
# etcdserverpb.ResponseHeader: revision = 3. mvccpb.KeyValue: key = 1, value = 5.
_HEADER, _KVS, _MORE = 1, 2, 3
_REVISION_TAG = 3 << 3 | 0
_KEY_TAG = 1 << 3 | 2
_VALUE_TAG = 5 << 3 | 2


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    result, shift = byte & 0x7F, 7
    pos += 1
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip(buf: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(buf, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        size, pos = _varint(buf, pos)
        return pos + size
    if wire == 5:
        return pos + 4
    raise ValueError(f"unsupported protobuf wire type {wire}")


def decode_range(buf: bytes) -> tuple[int, bool, list[tuple[bytes, bytes]]]:
    """(header revision, more, [(key, value)]) of a serialized RangeResponse."""
    revision, more = 0, False
    kvs: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire != 2:
            if field == _MORE and wire == 0:
                flag, pos = _varint(buf, pos)
                more = bool(flag)
            else:
                pos = _skip(buf, pos, wire)
            continue
        size, pos = _varint(buf, pos)
        stop = pos + size
        if field == _KVS:
            key = value = b""
            p = pos
            while p < stop:
                t, p = _varint(buf, p)
                if t in (_KEY_TAG, _VALUE_TAG):
                    n, p = _varint(buf, p)
                    if t == _KEY_TAG:
                        key = buf[p:p + n]
                    else:
                        value = buf[p:p + n]
                    p += n
                else:
                    p = _skip(buf, p, t & 7)
            kvs.append((key, value))
        elif field == _HEADER:
            p = pos
            while p < stop:
                t, p = _varint(buf, p)
                if t == _REVISION_TAG:
                    revision, p = _varint(buf, p)
                else:
                    p = _skip(buf, p, t & 7)
        pos = stop
    if pos != end:
        raise ValueError("truncated RangeResponse")
    return revision, more, kvs
