# Prometheus /metrics on each controller (controller.metrics_listen): real controller
# processes, scraped over HTTP with urllib, parsed with prometheus-client's own text parser;
# every pair's state and lag equal the controller's own query answer, and the counters move
# with the writes that were made.
from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mirror_world import build, channel, establish, stop, wait_settled
from prometheus_client.parser import text_string_to_metric_families

from remcopy.controller.process import free_port
from remcopy.states import CopyMode, PairState

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "contrib" / "prometheus" / "remcopy-alerts.yml"
DEVICES = tuple(0x0A00 + c for c in range(4))
WRITE = b"m" * 65536
# Long enough that a secondary paused by the test is never declared lost meanwhile (the test
# waits on states, not on these).
PATIENT = {"ack_timeout_s": 600.0, "heartbeat_timeout_s": 600.0}


@pytest.fixture
async def world(tmp_path):
    w = await build(
        tmp_path,
        primaries=1,
        volumes=4,
        primary_settings={"metrics_listen": f"127.0.0.1:{free_port()}", **PATIENT},
        secondary_settings={"metrics_listen": f"127.0.0.1:{free_port()}"},
    )
    yield w
    await stop(w)


def metrics_address(proc) -> str:  # type: ignore[no-untyped-def]
    """The metrics address from the controller's config (the test chose the port)."""
    text = proc.config_path.read_text()
    line = next(x for x in text.splitlines() if x.startswith("metrics_listen"))
    return line.split("=", 1)[1].strip().strip('"')


async def scrape(proc, path: str = "/metrics") -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    """GET the path with urllib: (status, content type, body)."""

    def get() -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(f"http://{metrics_address(proc)}{path}", timeout=60) as r:
                return r.status, r.headers["Content-Type"], r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    return await asyncio.to_thread(get)


async def samples(proc) -> dict[str, list]:  # type: ignore[no-untyped-def,type-arg]
    """Every sample of one scrape, by sample name (counters' `_total`, histograms' parts)."""
    status, content_type, body = await scrape(proc)
    assert status == 200 and content_type.startswith("text/plain")
    out: dict[str, list] = {}  # type: ignore[type-arg]
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def one(found: dict, metric: str, **labels: str) -> float:  # type: ignore[type-arg]
    """The value of the one sample of `metric` with these labels."""
    matches = [
        s.value
        for s in found.get(metric, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (metric, labels, found.get(metric))
    return float(matches[0])


def address(device: int) -> str:
    return f"64015:1A00:{device >> 8:02X}:{device & 0xFF:02X}"


async def test_metrics_pair_state_and_lag_equal_the_query_answer(world):
    """Async pairs with their secondary paused: writes wait unconfirmed, so each device has
    its own lag; /metrics shows each pair's state, lag bytes and changed tracks exactly as the
    query answers them, its lag in seconds between two answers around the scrape, and the
    write counters, the write-latency histogram and the link's updates moved by the writes."""
    primary = world.primaries[0]
    await establish(world, 0, CopyMode.ASYNC)
    before = await samples(primary)
    written = {DEVICES[0]: 3, DEVICES[1]: 1}
    world.secondary.pause()
    try:
        async with channel(primary) as ch:
            for device, n in written.items():
                for i in range(n):
                    await ch.write(device, i * len(WRITE), WRITE)
            first = {s.device: s for s in await ch.query(DEVICES)}
            found = await samples(primary)
            last = {s.device: s for s in await ch.query(DEVICES)}
    finally:
        world.secondary.unpause()
    for device in DEVICES:
        q, labels = first[device], {"device": address(device)}
        assert q.state is PairState.DUPLEX
        assert one(found, "remcopy_pair_state", **labels, state="DUPLEX", mode="async") == 1
        assert one(found, "remcopy_pair_lag_bytes", **labels) == q.lag_bytes
        assert one(found, "remcopy_pair_journal_bytes", **labels) == q.journal_bytes
        assert q.lag_bytes == written.get(device, 0) * len(WRITE)
        assert (
            q.journal_bytes == q.lag_bytes
        )  # an async pair: every unconfirmed update is journaled
        assert one(found, "remcopy_pair_changed_tracks", **labels) == q.dirty_tracks
        lag_s = one(found, "remcopy_pair_lag_seconds", **labels)
        assert q.lag_ns / 1e9 <= lag_s <= last[device].lag_ns / 1e9
        assert (lag_s > 0) == (device in written)
        # Unconfirmed updates keep their tracks marked: not yet the same on both ends.
        ratio = one(found, "remcopy_pair_copy_progress_ratio", **labels)
        assert ratio == (q.tracks - q.dirty_tracks) / q.tracks == q.copy_ratio()
        assert (ratio < 1.0) == (device in written)
    labels = {"device": address(DEVICES[0]), "volser": "P00000", "role": "primary"}
    assert one(found, "remcopy_pair_state", **labels, peer="65000:20:00") == 1
    n = sum(written.values())
    for name, extra in (
        ("remcopy_host_writes_total", {}),
        ("remcopy_host_io_latency_seconds_count", {"op": "write"}),
        ("remcopy_peer_updates_sent_total", {"peer": "cntlb"}),
    ):
        assert one(found, name, **extra) - one(before, name, **extra) == n, name
    assert one(found, "remcopy_peer_link_up", peer="cntlb") == 1
    assert one(found, "remcopy_controller_info", name="cntla0", serial="64015") == 1
    # The secondary, running again, applies them: its counter for this primary moves.
    async with channel(primary) as ch:
        for device in DEVICES:
            await wait_settled(ch, (device,))
            while (await ch.query((device,)))[0].lag_bytes:  # each round a real query
                pass
    applied = await samples(world.secondary)
    assert one(applied, "remcopy_peer_updates_applied_total", peer="cntla0") >= n
    assert one(applied, "remcopy_peer_applied_bytes_total", peer="cntla0") >= n * len(WRITE)


async def test_metrics_show_the_last_state_change_and_state_commits(world):
    """After an establish: each sync pair DUPLEX, its last change `copy-done` at the time the
    query answers, consistent as of the scrape (between two readings of the clock); the
    state-commit histogram counted every commit."""
    primary = world.primaries[0]
    await establish(world, 0, CopyMode.SYNC)
    async with channel(primary) as ch:
        answers = {s.device: s for s in await ch.query(DEVICES)}
    before_ns = time.time_ns()
    found = await samples(primary)
    after_ns = time.time_ns()
    for device in DEVICES:
        q, labels = answers[device], {"device": address(device)}
        assert (q.state, q.change_cause) == (PairState.DUPLEX, "copy-done")
        assert one(found, "remcopy_pair_state", **labels, state="DUPLEX", mode="sync") == 1
        changed = one(found, "remcopy_pair_state_change_time_seconds", **labels, cause="copy-done")
        assert changed == q.changed_at_ns / 1e9
        consistent = one(found, "remcopy_pair_consistency_time_seconds", **labels)
        assert before_ns / 1e9 <= consistent <= after_ns / 1e9
    commits = one(found, "remcopy_state_commits_total")
    assert commits >= 2  # the establish, then the copies done
    assert one(found, "remcopy_state_commit_latency_seconds_count") == commits
    last_bucket = found["remcopy_state_commit_latency_seconds_bucket"][-1]
    assert (last_bucket.labels["le"], last_bucket.value) == ("+Inf", commits)


async def test_metrics_endpoint_answers_only_get_metrics(world):
    """Another path is 404; a request that is not HTTP is closed without an answer."""
    primary = world.primaries[0]
    status, _, body = await scrape(primary, "/")
    assert status == 404 and "GET /metrics" in body
    host, port = metrics_address(primary).rsplit(":", 1)

    def garbage() -> bytes:
        with socket.create_connection((host, int(port)), timeout=60) as s:
            s.sendall(b"HELLO\r\n\r\n")
            return s.recv(100)

    assert await asyncio.to_thread(garbage) == b""
    assert (await scrape(primary))[0] == 200  # still serving
    assert await primary.stop() == 0  # SIGTERM: the endpoint stops with the controller


async def test_alert_rules_parse_and_name_metrics_the_controllers_export(world):
    """contrib/prometheus/remcopy-alerts.yml is valid YAML of Prometheus rule groups, with
    the four promised alerts, and every remcopy_ metric it names is one a controller exports."""
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    assert {"RemcopyRpoOver", "RemcopyPairNotDuplex", "RemcopyLinkDown"} <= names
    assert "RemcopyControllerDown" in names
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
    await establish(world, 0, CopyMode.SYNC)
    exported = {name.removesuffix("_total") for name in await samples(world.primaries[0])}
    named = {m for rule in rules for m in re.findall(r"remcopy_[a-z_]+", rule["expr"])}
    assert named and named <= exported, named - exported


async def test_metrics_count_holds_and_show_a_lost_secondary(world):
    """Consistency-group pairs lose their secondary: each device holds host writes, the
    controller freezes them together, they go SUSPENDED_ERROR; /metrics shows the holds and the
    freeze counted, the link down, and each pair's state and last change as the query answers
    them."""
    primary = world.primaries[0]
    await establish(world, 0, CopyMode.SYNC, consistency_group=True)
    before = await samples(primary)
    async with channel(primary) as ch:
        events = await ch.subscribe()
        await world.secondary.kill()
        left: set[str] = set()
        while len(left) < len(DEVICES):
            event = await events.wait_for(r"DUPLEX -> SUSPENDED_ERROR")
            assert event.device is not None
            left.add(event.device)
        answers = {s.device: s for s in await ch.query(DEVICES)}
    found = await samples(primary)
    assert one(found, "remcopy_holds_total") - one(before, "remcopy_holds_total") == len(DEVICES)
    assert one(found, "remcopy_peer_link_up", peer="cntlb") == 0
    for device in DEVICES:
        q, labels = answers[device], {"device": address(device)}
        assert q.state is PairState.SUSPENDED_ERROR
        assert one(found, "remcopy_pair_state", **labels, state="SUSPENDED_ERROR") == 1
        assert q.change_cause == "freeze"  # the held devices were frozen together at T
        changed = one(found, "remcopy_pair_state_change_time_seconds", **labels, cause="freeze")
        assert changed == q.changed_at_ns / 1e9
    started = {"kind": "started"}
    assert (
        one(found, "remcopy_freezes_total", **started)
        - one(before, "remcopy_freezes_total", **started)
        == 1
    )
