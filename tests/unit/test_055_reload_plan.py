# What a reload (SIGHUP) of a controller config changes live and what it names as needing a
# restart: controller/reload.py's pure plan, from two checked configs.
from __future__ import annotations

from typing import Any

from remcopy.controller.config import ControllerConfig
from remcopy.controller.reload import plan_reload

SECRET = "s3cret-hosta-key"
LINK = "s3cret-link-key"


def _config(**changes: Any) -> ControllerConfig:
    doc: dict[str, Any] = {
        "controller": {
            "name": "cntla",
            "serial": "64015",
            "listen": "127.0.0.1:7401",
            "data_dir": "/var/lib/remcopy/cntla",
        },
        "lss": [{"id": "0A", "ssid": "1A00"}],
        "volumes": [{"lss": "0A", "cca": "00", "volser": "PAY000", "size": "4MiB"}],
        "hosts": [{"name": "hosta", "secret": SECRET, "lss": ["0A"]}],
        "peers": [{"name": "cntlb", "serial": "65000", "address": "10.0.0.2:7401", "secret": LINK}],
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            doc[section] = {**doc[section], field: value}
        else:
            doc[section] = value
    return ControllerConfig.model_validate(doc)


def test_plan_reload_of_the_same_config_changes_nothing() -> None:
    """The running config read again: no line, nothing to do."""
    plan = plan_reload(_config(), _config())
    assert not plan.changed
    assert plan.config == _config()


def test_plan_reload_applies_hosts_and_closes_what_must_authenticate_again() -> None:
    """An added host, a removed one and a new secret change live; removal and a new secret
    close connections, a new grant keeps them."""
    new = _config(
        hosts=[
            {"name": "hosta", "secret": SECRET, "lss": ["0A", "0B"]},
            {"name": "hostb", "secret": "s3cret-hostb-key"},
        ]
    )
    plan = plan_reload(_config(), new)
    assert plan.applied == [
        "host hostb: added",
        "host hosta: lss 0A -> 0A,0B: its connections keep going with the new grant",
    ]
    assert (plan.hosts_closed, plan.hosts_regranted, plan.restart) == (set(), {"hosta"}, [])
    assert plan.config.hosts == new.hosts
    gone = plan_reload(new, _config(hosts=[{"name": "hosta", "secret": "an0ther-secret"}]))
    assert gone.hosts_closed == {"hosta", "hostb"}
    assert SECRET not in " ".join(gone.applied) and "an0ther" not in " ".join(gone.applied)


def test_plan_reload_of_peers_applies_addresses_and_keeps_what_needs_a_restart() -> None:
    """A peer's new address applies from its next connection; a new peer is added; a removed
    peer or a changed serial needs a restart and the running peer is kept."""
    new = _config(
        peers=[
            {"name": "cntlb", "serial": "65000", "address": "10.0.0.9:7401", "secret": LINK},
            {"name": "cntlc", "serial": "65001", "address": "10.0.0.3:7401", "secret": LINK},
        ]
    )
    plan = plan_reload(_config(), new)
    assert plan.applied == [
        "peer cntlc: added (serial 65001)",
        "peer cntlb: address 10.0.0.2:7401 -> 10.0.0.9:7401: used from its link's next connection",
    ]
    assert [p.address for p in plan.config.peers] == [("10.0.0.9", 7401), ("10.0.0.3", 7401)]
    moved = _config(
        peers=[{"name": "cntlb", "serial": "65002", "address": "10.0.0.2:7401", "secret": LINK}]
    )
    kept = plan_reload(_config(), moved)
    assert kept.restart == ["peer cntlb: serial 65000 -> 65002: needs a restart"]
    assert kept.config.peers == _config().peers
    assert plan_reload(_config(), _config(peers=[])).restart == [
        "peer cntlb: removed: needs a restart (its link stays until then)"
    ]


def test_plan_reload_names_controller_keys_lss_and_volumes_as_needing_a_restart() -> None:
    """listen, data_dir and the volumes need a restart and stay as they run; log_format
    changes live."""
    new = _config(
        controller__listen="127.0.0.1:7409",
        controller__log_format="json",
        volumes=[],
    )
    plan = plan_reload(_config(), new)
    assert plan.applied == ["controller.log_format: text -> json"]
    assert plan.restart == [
        "controller.listen: 127.0.0.1:7401 -> 127.0.0.1:7409: needs a restart",
        "volumes: changed (1 -> 0 entries): needs a restart",
    ]
    assert plan.config.controller.listen == ("127.0.0.1", 7401)
    assert plan.config.controller.log_format == "json"
    assert plan.config.volumes == _config().volumes
