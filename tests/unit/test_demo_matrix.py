"""The demo's matrix logic (demo.matrix): plan, expectations, tables and summaries."""

from __future__ import annotations

from demo import matrix
from demo.matrix import Target

TARGETS = [Target("host1/w1", "198.19.0.1", "fd00:198:19::1"),
           Target("host2/w1", "198.19.1.1", "fd00:198:19::101"),
           Target("host3/w1", "198.19.2.1", "fd00:198:19::201")]


def all_results(reached: bool = True, blocked_port: int | None = None) -> dict:
    out = {}
    for src in TARGETS:
        plan = matrix.probe_plan(src, TARGETS)
        answer = {c[0]: reached and c[3] != blocked_port for c in plan}
        out.update(matrix.parse_probe(src, answer))
    return out


def test_plan_covers_every_other_workload_family_and_check() -> None:
    plan = matrix.probe_plan(TARGETS[0], TARGETS)
    assert len(plan) == 2 * 2 * 3
    assert ["host2/w1|6|tcp:8080", "tcp", "fd00:198:19::101", 8080] in plan
    assert ["host3/w1|4|ping", "ping", "198.19.2.1", 0] in plan
    assert not any(c[0].startswith("host1/w1|") for c in plan)


def test_expectations_before_and_after_the_deny_rule() -> None:
    assert matrix.mismatches(all_results(), TARGETS, deny_rule=False) == []
    after = all_results(blocked_port=matrix.DENIED_PORT)
    assert matrix.mismatches(after, TARGETS, deny_rule=True) == []
    wrong = matrix.mismatches(after, TARGETS, deny_rule=False)
    assert len(wrong) == 6 * 2
    assert "host1/w1 -> host2/w1 IPv4 tcp:8080: blocked" in wrong
    # Everything blocked is wrong after the rule too: ping and the open port must work.
    assert len(matrix.mismatches(all_results(False), TARGETS, deny_rule=True)) == 6 * 2 * 2


def test_missing_results_are_mismatches() -> None:
    results = all_results()
    del results[("host2/w1", "host3/w1", 6, "ping")]
    assert matrix.mismatches(results, TARGETS, False) == [
        "host2/w1 -> host3/w1 IPv6 ping: missing"]
    line, good = matrix.summary(results, TARGETS, 6, "before", False)
    assert not good and line.endswith("NOT as expected")


def test_summary_and_table() -> None:
    after = all_results(blocked_port=matrix.DENIED_PORT)
    line, good = matrix.summary(after, TARGETS, 4, "after", True)
    assert good
    assert line == ("matrix after IPv4: ping 6/6, tcp:8080 0/6, tcp:9090 6/6 -> as expected")
    table = matrix.render_table(after, TARGETS, 4)
    assert table[1].split() == ["from", "\\", "to", "host1/w1", "host2/w1", "host3/w1"]
    assert table[2].split() == ["host1/w1", ".", "ok", "--", "ok", "ok", "--", "ok"]
    widths = {len(row.rstrip()) for row in table[2:]}
    assert len(table) == 2 + len(TARGETS) and len(widths) <= 2  # aligned columns
