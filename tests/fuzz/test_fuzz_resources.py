"""Fuzzing `calicoctl apply -f` (YAML and JSON resource files) against a real etcd.

Properties, for any file: calicoctl exits 0 or with a documented error code and one line
`Error: ...` on stderr (no traceback, no "unexpected" error); a rejected file writes
nothing (every key, value and the etcd revision unchanged); an accepted file round-trips:
`calicoctl get KIND -o yaml | calicoctl apply -f -` leaves every stored value as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from libcalico import keyspace
from libcalico.datastore import Datastore
from netsim.etcd import EtcdServer
from tests.fuzz.strategies import NASTY_TEXT, mutated_documents
from tests.support.ctl import Ctl

pytestmark = pytest.mark.etcd

# Hostile YAML that is not a resource at all: deep nesting, alias fans, unsafe tags,
# duplicate keys, bad encodings of numbers.
YAML_NASTIES = st.sampled_from([
    "[" * 5000 + "]" * 5000,
    "{a: " * 3000 + "1" + "}" * 3000,
    "a: &a [1, 2]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nd: [*c, *c, *c, *c]\n",
    "!!python/object/apply:os.system ['echo pwned']\n",
    "apiVersion: v1\nkind: profile\nkind: ipPool\nmetadata: {name: x}\n",
    "apiVersion: v1\nkind: ipPool\nmetadata: {cidr: 0x10}\n",
    "---\n---\n...\n",
    "\x00\x01\x02",
    "apiVersion: v1\nkind: profile\nmetadata: {name: \"\\ud800\"}\n",
    "apiVersion: v1\nkind: profile\nmetadata: {name: web}\nspec: {labels: {a: \"\\ud800\"}}\n",
    '{"apiVersion": "v1", "kind": "profile", "metadata": {"name": "w"}, '
    '"spec": {"labels": {"a": "\\ud800"}, '
    '"inbound_rules": [{"src_selector": "a == \'\\udfff\'"}]}}',
])


def _render(docs: list[Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(docs if len(docs) > 1 else docs[0])
    return yaml.safe_dump_all(docs, allow_unicode=True)


# Files are bytes: what reaches calicoctl need not even be UTF-8.
FILES = ((st.tuples(st.lists(mutated_documents(), min_size=1, max_size=3),
                    st.sampled_from(["yaml", "json"])).map(lambda t: _render(*t))
          | YAML_NASTIES | NASTY_TEXT).map(lambda t: t.encode("utf-8", "surrogatepass"))
         | st.binary(max_size=64))


@pytest.fixture(scope="module")
def fuzz_etcd(etcd_server: EtcdServer) -> Iterator[tuple[Ctl, Datastore]]:
    store = etcd_server.client()
    try:
        yield Ctl({"ETCD_ENDPOINTS": etcd_server.url}), store
    finally:
        store.delete_prefix(keyspace.ROOT + "/")
        store.close()


def dump(store: Datastore) -> tuple[dict[str, str], int]:
    kvs, _ = store.list(keyspace.ROOT + "/")
    return {kv.key: kv.value for kv in kvs}, store.revision()


def check_one_line_error(code: int, err: str) -> None:
    assert code in (2, 3), f"exit {code}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert not lines[0].startswith("Error: unexpected ") and "Traceback" not in err, err
    if code == 2:  # invalid input: names the field (ValidationError's shape)
        assert lines[0].startswith("Error: invalid "), err


@given(FILES)
def test_apply_accepts_and_round_trips_or_rejects_without_writing(
        fuzz_etcd: tuple[Ctl, Datastore], text: bytes) -> None:
    ctl, store = fuzz_etcd
    store.delete_prefix(keyspace.ROOT + "/")
    ctl("profile", "add", "existing")
    before, revision = dump(store)
    res = ctl("apply", "-f", "-", input=text, code=None)
    event(f"exit {res.code}")
    if res.code != 0:
        check_one_line_error(res.code, res.err)
        assert dump(store) == (before, revision), "a rejected apply wrote to etcd"
        return
    assert res.err == "", res.err
    applied, _ = dump(store)
    kinds = {line.split()[1] for line in res.out.splitlines() if line.startswith("Applied ")}
    assert kinds, res.out
    for kind in sorted(kinds):
        shown = ctl("get", kind, "-o", "yaml")
        if not [d for d in yaml.safe_load_all(shown.out) if d]:
            continue  # nothing of this kind is stored (a node without addresses, say)
        again = ctl("apply", "-f", "-", input=shown.out, code=None)
        assert again.code == 0, f"get {kind} -o yaml | apply failed: {again.err}\n{shown.out}"
        assert dump(store)[0] == applied, f"get {kind} -o yaml | apply changed etcd"
