"""confd's applier against the real `bird -p`: invalid renders never reach the live file,
unchanged renders are not rewritten, and a BIRD that is not running yet is waited for."""

from __future__ import annotations

from pathlib import Path

from confd.apply import BirdApplier, parse_bird_error
from confd.render import render
from confd.view import build_view
from tests.unit.test_confd_render import SCENARIOS

# BIRD 2 comes with the README's install: without it these tests fail, never skip.


def make_applier(tmp_path: Path) -> BirdApplier:
    return BirdApplier(str(tmp_path / "bird.cfg"), str(tmp_path / "no-bird.ctl"),
                       include_dir=str(tmp_path / "bird.d"))


def valid_text(tmp_path: Path, scenario: str = "full_mesh") -> str:
    values, host = SCENARIOS[scenario]
    return render(build_view(values), host, include_dir=str(tmp_path / "bird.d"))


def test_valid_text_goes_live_and_waits_for_bird(tmp_path: Path) -> None:
    applier = make_applier(tmp_path)
    text = valid_text(tmp_path)
    result = applier.apply(text)
    assert result.changed and result.error is None
    assert not result.reloaded and result.reload_pending  # no BIRD at the socket
    assert (tmp_path / "bird.cfg").read_text() == text
    assert (tmp_path / "bird.d").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.cfg", "bird.d"]


def test_unchanged_text_is_not_rewritten(tmp_path: Path) -> None:
    applier = make_applier(tmp_path)
    text = valid_text(tmp_path)
    applier.apply(text)
    inode = (tmp_path / "bird.cfg").stat().st_ino
    again = make_applier(tmp_path).apply(text)  # a restarted confd reads the live file
    assert not again.changed
    assert (tmp_path / "bird.cfg").stat().st_ino == inode


def test_invalid_text_keeps_the_old_file_and_names_the_line(tmp_path: Path) -> None:
    applier = make_applier(tmp_path)
    good = valid_text(tmp_path)
    applier.apply(good)
    bad = good.replace("  multihop;\n", "  multihop;\n  neighbour typo;\n", 1)
    bad_line = bad.splitlines().index("  neighbour typo;") + 1
    result = applier.apply(bad)
    assert not result.changed and result.error is not None
    assert result.error.line == bad_line
    assert result.error.line_text.strip() == "neighbour typo;"
    assert "syntax error" in result.error.message
    assert (tmp_path / "bird.cfg").read_text() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.cfg", "bird.d"]
    # A later valid render goes through.
    other = valid_text(tmp_path, "mixed_as")
    assert applier.apply(other).changed
    assert (tmp_path / "bird.cfg").read_text() == other


def test_error_in_an_operator_include_is_reported_with_its_file(tmp_path: Path) -> None:
    applier = make_applier(tmp_path)
    (tmp_path / "bird.d").mkdir()
    (tmp_path / "bird.d" / "broken.conf").write_text("protocol static {\n  ipv4;\n  oops\n}\n")
    result = applier.apply(valid_text(tmp_path))
    assert result.error is not None
    assert result.error.file.endswith("broken.conf")
    assert result.error.line in (3, 4)
    assert not (tmp_path / "bird.cfg").exists()


def test_parse_bird_error_without_location() -> None:
    error = parse_bird_error("bird: Cannot open something\n", "", "/x/bird.cfg")
    assert error.line == 0 and "Cannot open" in error.message
