"""Rendering: a host's BGP configuration as BIRD 2 configuration text.

Owns: finding the Jinja2 templates (`find_templates_dir`), the Jinja2 environment and
its filters, and `render(view, hostname)`, a pure function of its arguments: the same
datastore state always gives byte-identical text (no timestamps), which is what lets the
applier skip unchanged configurations.

Template search order: the `templates_dir` argument, `$CALICO_CONFD_TEMPLATES`, the
repository's top-level `templates/` next to this package (checkout and editable install),
`confd/templates` inside the package, `<sys.prefix>/share/calico-confd/templates` (wheel
data files) and `/etc/calico/confd/templates`.

Leaves to others: what the configuration holds (`confd.calc`), writing and reloading it
(`confd.apply`).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import jinja2

from confd.calc import HostConfig, calculate_host_config
from confd.view import BGPView

MAIN_TEMPLATE = "bird.conf.j2"
DEFAULT_INCLUDE_DIR = "/etc/calico/bird.d"
TEMPLATES_ENV = "CALICO_CONFD_TEMPLATES"


def template_search_path(explicit: str | None = None) -> list[Path]:
    here = Path(__file__).resolve().parent
    candidates = [explicit, os.environ.get(TEMPLATES_ENV) or None,
                  here.parent / "templates", here / "templates",
                  Path(sys.prefix) / "share" / "calico-confd" / "templates",
                  "/etc/calico/confd/templates"]
    return [Path(c) for c in candidates if c]


def find_templates_dir(explicit: str | None = None) -> Path:
    """The first directory of the search path that holds the main template."""
    path = template_search_path(explicit)
    if explicit and not (Path(explicit) / MAIN_TEMPLATE).is_file():
        raise FileNotFoundError(f"no {MAIN_TEMPLATE} in templates dir {explicit}")
    for candidate in path:
        if (candidate / MAIN_TEMPLATE).is_file():
            return candidate
    raise FileNotFoundError(f"no {MAIN_TEMPLATE} in any of: "
                            + ", ".join(str(p) for p in path))


def _bird_string(value: object) -> str:
    """A value as the inside of a BIRD string literal. BIRD's lexer has no escapes
    (a string runs from one `"` to the next, on one line), so a double quote becomes a
    single one and a backslash or control character a `?`: descriptions are for people,
    and a node named `"` must not break every host's configuration."""
    text = str(value).replace('"', "'")
    return "".join("?" if c == "\\" or not c.isprintable() else c for c in text)


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["add_suffix"] = lambda value, suffix: f"{value}{suffix}"
    env.filters["bird_str"] = _bird_string
    return env


def render_host(host: HostConfig, include_dir: str = DEFAULT_INCLUDE_DIR,
                templates_dir: str | None = None) -> str:
    """Render an already calculated host configuration."""
    env = _environment(str(find_templates_dir(templates_dir)))
    text = env.get_template(MAIN_TEMPLATE).render(host=host,
                                                  include_dir=include_dir.rstrip("/"))
    # Collapse the blank lines that template control blocks leave behind.
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() or (lines and lines[-1].strip()):
            lines.append(line.rstrip())
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n"


def render(view: BGPView, hostname: str, include_dir: str = DEFAULT_INCLUDE_DIR,
           templates_dir: str | None = None) -> str:
    """BIRD 2 configuration text of `hostname`. ValidationError if it has no address."""
    return render_host(calculate_host_config(view, hostname), include_dir, templates_dir)
