"""`calicoctl profile`: profiles, their tags and their ordered rules.

Owns: the seed-era profile command words:
  profile add|remove P, profile show [--detailed],
  profile P tag add|remove|show, profile P rule add|remove|show|json|update.
Every change is an atomic read-modify-write of the profile through
`CalicoClient.update_profile` (CAS over its keys); the rule words are parsed by
`calicoctl.rulespec`.

Leaves to others: validation (`libcalico.model`), storage (`libcalico.client`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any

import click

from calicoctl.context import ctl
from calicoctl.groups import NamedGroup, named_subgroup
from calicoctl.output import emit, output_option


@click.group(cls=NamedGroup)
def profile() -> None:
    """Manage security profiles.

    \b
    Per-profile commands:
      calicoctl profile PROFILE tag (add|remove) TAG
      calicoctl profile PROFILE tag show
      calicoctl profile PROFILE rule add (inbound|outbound) [--at=N] ACTION [MATCH...]
      calicoctl profile PROFILE rule remove (inbound|outbound) (--at=N | ACTION [MATCH...])
      calicoctl profile PROFILE rule (show|json|update)
    """


@profile.command("add")
@click.argument("name", metavar="PROFILE")
def profile_add(name: str) -> None:
    """Create an empty profile (tagged with its own name, like calicoctl v0.x)."""
    from libcalico.model import Profile

    # Seed-era default rules: allow in from the profile's own tag, allow all out.
    ctl().client.create_profile(Profile.with_default_rules(name))
    click.echo(f"Created profile {name}")


@profile.command("remove")
@click.argument("name", metavar="PROFILE")
@click.option("--no-check", is_flag=True, help="Remove even if endpoints still use it.")
def profile_remove(name: str, no_check: bool) -> None:
    """Remove a profile (refused while endpoints use it, unless --no-check)."""
    from libcalico.errors import Conflict
    client = ctl().client
    client.get_profile(name)
    if not no_check:
        users: list[Any] = [e for e in client.list_workload_endpoints()
                            if name in e.profile_ids]
        users += [e for e in client.list_host_endpoints() if name in e.profile_ids]
        if users:
            raise Conflict(f"profile {name} is used by {len(users)} endpoint(s), e.g. "
                           f"{users[0].endpoint_id}; use --no-check to remove anyway")
    client.delete_profile(name)
    click.echo(f"Deleted profile {name}")


@profile.command("show")
@click.option("--detailed", is_flag=True, help="Show tags, labels and rule counts.")
@output_option
def profile_show(detailed: bool, output: str) -> None:
    """List profiles."""
    if output == "table" and not detailed:  # names only: read keys, not rule documents
        from libcalico.client.names import profile_names

        emit(output, None, ["Name"], [(n,) for n in profile_names(ctl().store)])
        return
    profiles = ctl().client.list_profiles()
    emit("wide" if detailed and output == "table" else output,
         [p.to_resource() for p in profiles],
         ["Name"], [(p.name,) for p in profiles],
         ["Name", "Tags", "Labels", "Inbound rules", "Outbound rules"],
         [(p.name, ",".join(p.tags), ",".join(f"{k}={v}" for k, v in p.labels.items()),
           len(p.rules.inbound), len(p.rules.outbound)) for p in profiles])


@named_subgroup(profile, "PROFILE", "Commands on one profile.")
def profile_named(ctx: click.Context, name: str) -> None:
    from libcalico.model.validate import validate_name

    ctx.obj_profile = validate_name("profile", name)  # type: ignore[attr-defined]


def _name() -> str:
    ctx = click.get_current_context()
    while ctx is not None and not hasattr(ctx, "obj_profile"):
        ctx = ctx.parent  # type: ignore[assignment]
    return ctx.obj_profile


# --- tags --------------------------------------------------------------------------------

@profile_named.group("tag")
def tag() -> None:
    """Manage a profile's tags."""


@tag.command("add")
@click.argument("tag_name", metavar="TAG")
def tag_add(tag_name: str) -> None:
    """Add a tag to the profile."""
    from libcalico.model.validate import validate_name

    validate_name("tag", tag_name)
    ctl().client.update_profile(_name(), lambda p: replace(p, tags=(*p.tags, tag_name)))


@tag.command("remove")
@click.argument("tag_name", metavar="TAG")
def tag_remove(tag_name: str) -> None:
    """Remove a tag from the profile."""
    from libcalico.errors import NotFound

    def change(p):  # type: ignore[no-untyped-def]
        if tag_name not in p.tags:
            raise NotFound(f"profile {p.name} has no tag {tag_name}")
        return replace(p, tags=tuple(t for t in p.tags if t != tag_name))

    ctl().client.update_profile(_name(), change)


@tag.command("show")
@output_option
def tag_show(output: str) -> None:
    """Show the profile's tags."""
    p = ctl().client.get_profile(_name())
    emit(output, list(p.tags), ["Tag"], [(t,) for t in p.tags])


# --- rules -------------------------------------------------------------------------------

@profile_named.group("rule")
def rule() -> None:
    """Manage a profile's rules."""


_direction = click.argument("direction", type=click.Choice(["inbound", "outbound"]))
_ACTIONS = ("allow", "deny", "log", "next-tier")


def _with_rules(p, direction: str, rules: tuple):  # type: ignore[no-untyped-def]
    from libcalico.model import Rules

    if direction == "inbound":
        return replace(p, rules=Rules(rules, p.rules.outbound))
    return replace(p, rules=Rules(p.rules.inbound, rules))


@rule.command("add", context_settings={"ignore_unknown_options": True})
@_direction
@click.option("--at", "position", type=int, default=None,
              help="0-based position to insert at (default: append; negative counts "
                   "from the end).")
@click.argument("action", type=click.Choice(_ACTIONS))
@click.argument("match", nargs=-1, type=click.UNPROCESSED)
def rule_add(direction: str, position: int | None, action: str,
             match: tuple[str, ...]) -> None:
    """Add a rule: ACTION [PROTO] [type N [code N]] [from ...] [to ...].

    \b
    PROTO: tcp, udp, icmp, icmpv6, sctp, udplite or a number.
    from/to take: ports P, tag T, cidr C, selector S; negate any match
    with a leading '!' or a preceding 'not' (e.g. "from not cidr 198.18.0.0/24").
    """
    from calicoctl.rulespec import parse_rule
    from libcalico.errors import ValidationError

    new = parse_rule(action, match)

    def change(p):  # type: ignore[no-untyped-def]
        rules = list(getattr(p.rules, direction))
        if position is None:
            rules.append(new)
        else:
            if not -len(rules) - 1 <= position <= len(rules):
                raise ValidationError("--at", position,
                                      f"must be between 0 and {len(rules)}")
            rules.insert(position if position >= 0 else len(rules) + 1 + position, new)
        return _with_rules(p, direction, tuple(rules))

    ctl().client.update_profile(_name(), change)


@rule.command("remove", context_settings={"ignore_unknown_options": True})
@_direction
@click.option("--at", "position", type=int, default=None, help="0-based position to remove.")
@click.argument("action", type=click.Choice(_ACTIONS), required=False)
@click.argument("match", nargs=-1, type=click.UNPROCESSED)
def rule_remove(direction: str, position: int | None, action: str | None,
                match: tuple[str, ...]) -> None:
    """Remove a rule by position (--at) or by its exact words."""
    from calicoctl.rulespec import parse_rule
    from libcalico.errors import NotFound, ValidationError

    if (position is None) == (action is None):
        raise ValidationError("rule remove", " ".join(match) or None,
                              "give either --at=N or the rule's action and match")
    target = parse_rule(action, match) if action is not None else None

    def change(p):  # type: ignore[no-untyped-def]
        rules = list(getattr(p.rules, direction))
        if target is not None:
            if target not in rules:
                raise NotFound(f"profile {p.name} has no {direction} rule "
                               f"'{target.pprint()}'")
            rules.remove(target)
        else:
            assert position is not None
            if not -len(rules) <= position < len(rules):
                raise ValidationError("--at", position,
                                      f"no {direction} rule at that position "
                                      f"({len(rules)} rules)")
            del rules[position]
        return _with_rules(p, direction, tuple(rules))

    ctl().client.update_profile(_name(), change)


@rule.command("show")
def rule_show() -> None:
    """Show the profile's rules, numbered by position (as --at takes them)."""
    p = ctl().client.get_profile(_name())
    for title, rules in (("Inbound rules:", p.rules.inbound),
                         ("Outbound rules:", p.rules.outbound)):
        click.echo(title)
        for i, r in enumerate(rules):
            click.echo(f"  {i:>2} {r.pprint()}")


@rule.command("json")
def rule_json() -> None:
    """Print the profile's rules as JSON."""
    p = ctl().client.get_profile(_name())
    click.echo(json.dumps(p.rules_json(), indent=2, sort_keys=True))


@rule.command("update")
def rule_update() -> None:
    """Replace the profile's rules with JSON read from stdin (as `rule json` prints)."""
    from libcalico.errors import ValidationError
    from libcalico.model import Rules

    text = sys.stdin.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError("rules JSON", f"line {exc.lineno} column {exc.colno}",
                              exc.msg) from None
    rules = Rules.from_dict(data)
    ctl().client.update_profile(_name(), lambda p: replace(p, rules=rules))


COMMANDS = [profile]
