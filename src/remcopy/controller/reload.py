# What a reload (SIGHUP) of a controller's config changes, and what it cannot.
#
# Why: an administrator adds a host, rotates a secret or moves a peer without stopping the
# controller (a stop costs every host its I/O for the restart and may cost a resync). Some
# things can change under a running controller; others (its address, its volumes, its state
# folder) are woven into open sockets, files and pair states and need a restart. A reload
# applies the first kind, names the second, and a config that does not load is refused whole
# with the running one kept (`remcopy controller check` says the same about it).
#
# Pure: `plan_reload(old, new)` compares two checked configs and returns what to do; the
# server applies it (server.ControllerServer.reload) and logs each line.
#
# What changes live:
# - hosts: added ones may connect at once; a removed host, or one whose secret changed, has
#   its connections closed (they authenticate again, or cannot); one whose grant (lss)
#   changed keeps its connections with the new grant.
# - peers: added ones are used when a pair needs them; a peer whose address or secret changed
#   gets them from its link's next connection (a link up now stays up).
# - controller.log_format.
# Everything else needs a restart and is left as it runs.
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from remcopy.controller.config import ControllerConfig, HostSection, PeerSection

LIVE_CONTROLLER_KEYS: Final = frozenset({"log_format"})


@dataclass(slots=True, kw_only=True)
class ReloadPlan:
    """What a reload changes, and how to say it (one log line each)."""

    config: ControllerConfig
    """The config to run with: the old one with what changes live taken from the new one."""
    applied: list[str] = field(default_factory=list)
    """What changed live, a line each."""
    restart: list[str] = field(default_factory=list)
    """What changed and needs a restart (not applied), a line each."""
    hosts_closed: set[str] = field(default_factory=set)
    """Hosts whose connections must be closed (removed, or their secret changed)."""
    hosts_regranted: set[str] = field(default_factory=set)
    """Hosts whose open connections take their new grant."""

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.restart)


def plan_reload(old: ControllerConfig, new: ControllerConfig) -> ReloadPlan:
    """Compare the running config with a newly loaded one."""
    plan = ReloadPlan(config=old)
    _hosts(plan, {h.name: h for h in old.hosts}, {h.name: h for h in new.hosts})
    peers_kept = _peers(plan, {p.name: p for p in old.peers}, {p.name: p for p in new.peers})
    controller = _controller(plan, old, new)
    plan.config = old.model_copy(
        update={"hosts": new.hosts, "peers": peers_kept, "controller": controller}
    )
    for section in ("lss", "volumes"):
        before, after = getattr(old, section), getattr(new, section)
        if before != after:
            plan.restart.append(
                f"{section}: changed ({len(before)} -> {len(after)} entries): needs a restart"
            )
    return plan


def _hosts(plan: ReloadPlan, old: dict[str, HostSection], new: dict[str, HostSection]) -> None:
    for name in sorted(new.keys() - old.keys()):
        plan.applied.append(f"host {name}: added")
    for name in sorted(old.keys() - new.keys()):
        plan.applied.append(f"host {name}: removed: its connections are closed")
        plan.hosts_closed.add(name)
    for name in sorted(old.keys() & new.keys()):
        before, after = old[name], new[name]
        if before.secret != after.secret:
            plan.applied.append(
                f"host {name}: secret changed: its connections are closed (they authenticate again)"
            )
            plan.hosts_closed.add(name)
        elif before.lss != after.lss:
            plan.applied.append(
                f"host {name}: lss {_lss(before.lss)} -> {_lss(after.lss)}: its connections "
                "keep going with the new grant"
            )
            plan.hosts_regranted.add(name)


def _lss(lss: list[int] | None) -> str:
    return "all" if lss is None else ",".join(f"{x:02X}" for x in lss) or "none"


def _peers(
    plan: ReloadPlan, old: dict[str, PeerSection], new: dict[str, PeerSection]
) -> list[PeerSection]:
    """The peers to run with: new ones and changed addresses or secrets; a removed peer, or
    one whose serial changed, stays as it runs until a restart."""
    kept = dict(old)
    for name in sorted(new.keys() - old.keys()):
        clash = next((p for p in old.values() if p.serial == new[name].serial), None)
        if clash is not None:
            plan.restart.append(
                f"peer {name}: serial {new[name].serial} is peer {clash.name}'s now: needs a "
                "restart"
            )
            continue
        plan.applied.append(f"peer {name}: added (serial {new[name].serial})")
        kept[name] = new[name]
    for name in sorted(old.keys() - new.keys()):
        plan.restart.append(f"peer {name}: removed: needs a restart (its link stays until then)")
    for name in sorted(old.keys() & new.keys()):
        before, after = old[name], new[name]
        if before.serial != after.serial:
            plan.restart.append(
                f"peer {name}: serial {before.serial} -> {after.serial}: needs a restart"
            )
            continue
        what = [
            f"address {_address(before.address)} -> {_address(after.address)}"
            if before.address != after.address
            else "",
            "secret changed" if before.secret != after.secret else "",
        ]
        if any(what):
            plan.applied.append(
                f"peer {name}: {', '.join(w for w in what if w)}: used from its link's next "
                "connection"
            )
            kept[name] = after
    return [kept[name] for name in sorted(kept)]


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _controller(plan: ReloadPlan, old: ControllerConfig, new: ControllerConfig) -> Any:
    before = old.controller.model_dump()
    after = new.controller.model_dump()
    live: dict[str, Any] = {}
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) == after.get(key):
            continue
        if key in LIVE_CONTROLLER_KEYS:
            plan.applied.append(f"controller.{key}: {before.get(key)} -> {after.get(key)}")
            live[key] = getattr(new.controller, key)
        else:
            plan.restart.append(
                f"controller.{key}: {_shown(before.get(key))} -> {_shown(after.get(key))}: "
                "needs a restart"
            )
    return old.controller.model_copy(update=live)


def _shown(value: object) -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return _address((str(value[0]), value[1]))
    return str(value)
