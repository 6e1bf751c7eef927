# Benchmark: the fault campaigns run long, and the planted bugs they must catch.
#
# What is measured, and why: DESIGN.md section 8 aims every fault campaign at 0 acknowledged
# writes lost and 0 inconsistent secondaries, and issue 9 asks for proof that the harness can
# fail. This runs every campaign of `remcopy.workload.campaigns` (kill -9 of a primary, kill -9
# of the secondary, link cut/stall/delay with a freeze, suspend at T with shadow copies, disk
# full and I/O errors) against real controller processes on 127.0.0.1 for many iterations,
# each ending with the checker, then hunts each planted bug (config planted_bugs, testing
# only) with the campaigns that must catch it. The full run tries every bug against every
# campaign, which gives the table of which campaign catches which bug; --quick hunts each bug
# with its first catcher only.
#
# Figures: per campaign, iterations, faults injected, checks passed, acknowledged writes lost,
# inconsistent secondaries, planted bugs caught. A planted bug counts as caught when the
# first campaign of CATCHERS failed a check with the bug active, for the reason the bug breaks
# (CAUGHT_FOR), and the harness itself did not fail; the table of which campaign caught which
# bug counts any failed check.
#
# The rolling campaign (issue 14: a consistency group over three primaries frozen by the
# controllers alone) adds the freeze's figures, all in milliseconds:
# - freeze_ms_p50/p99: from the first `hold` line of any primary to the last pair of every
#   reachable primary announced sealed (`DUPLEX -> SUSPENDED` or `-> SUSPENDED_ERROR`). Both
#   ends are ARRIVAL TIMES of the event lines at the harness's subscriber (one time.time_ns()
#   when its reader takes the line), not the controllers' clocks: event delivery and the
#   harness's loop (shared with the workload) are included. The window includes the freeze
#   margin (T = now + freeze_margin_s, 250 ms by default), which no freeze can beat.
# - freeze_write_stall_p99_ms: the p99 latency of the host writes that were in flight at
#   some moment of a freeze window, measured by the workload (the last attempt's issue stamp
#   to its acknowledgement: a write refused as late and reissued counts from its reissue).
#   A write to the failed device waits for the detection (ack timeout 1 s on a stall) and the
#   hold, so this is the host's view of the whole fault, not the freeze's alone;
#   freeze_issued_write_p99_ms is the same for the writes issued after the first hold line
#   only (a write to a held device waits for the freeze's release).
# - detect_ms_p50: a separate phase with NO host writes (measure_detection): a link stall or
#   cut or a SIGSTOPped secondary, from injection to the first `hold` or `-> SUSPENDED_ERROR`
#   line at the harness; heartbeats are the only traffic (product defaults: every 0.5 s,
#   timeout 2 s).
# - rolling_iterations, rolling_inconsistent (inconsistent secondaries: must be 0), and
#   rolling_findings (every failed check of the campaign, e.g. a group that did not freeze).
# - async_disaster_iterations, async_disaster_inconsistent (must be 0): an async group over
#   three primaries, one link slow and one stalled or cut (or the group suspended at T), the
#   site lost, recovered at C; a recovery whose secondary is not a consistent cut at C (after
#   a suspend: the cut at T) counts as inconsistent.
#
# Run: .venv/bin/python bench/faults.py [--quick] [--seed N] [--iterations N] [--campaign NAME]
# [--detect-iterations N]. --campaign runs one campaign (and only the hunts that use it). The
# last line is `RESULT {json}` with iterations, faults_injected, acked_writes_lost,
# inconsistent_secondaries, planted_bugs and planted_bugs_caught (and more).
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from _world import load_average, main_guard, percentile
from remcopy import aio
from remcopy.workload.campaigns import (
    CAMPAIGNS,
    CATCHERS,
    PLANTED_BUGS,
    CampaignResult,
    CampaignSettings,
    DetectionResult,
    caught_as_expected,
    hunt_planted_bug,
    measure_detection,
    run_campaign,
)

SEED_DEFAULT: Final = 20261126
ITERATIONS_FULL: Final = 200
ITERATIONS_QUICK: Final = 3
# A hunt stops at its first finding. --quick hunts each bug with the campaign the tests use,
# which catches it in the first iteration or two; the full run also tries every other
# campaign, and one that cannot catch a bug runs all its iterations.
HUNT_ITERATIONS_FULL: Final = 6
HUNT_ITERATIONS_QUICK: Final = 12
# The bugs that need a track only the killed primary's change map names (clear_bit_early,
# failback_one_side) took up to 7 iterations: the first catcher gets as many as the tests.
HUNT_ITERATIONS_FIRST_CATCHER: Final = 20
# The full run waits longer for its fault (more writes before it, so rings wrap around).
ACKS_FULL: Final = (20, 400)
ACKS_QUICK: Final = (20, 120)
# Findings shown per campaign under the table (all of them are in the result's findings).
FINDINGS_SHOWN_MAX: Final = 5
# Link deaths timed with no host writes (each costs a freeze, a heal and a resume: seconds).
DETECT_ITERATIONS_FULL: Final = 12
DETECT_ITERATIONS_QUICK: Final = 3


@dataclass
class Plan:
    quick: bool
    seed: int
    iterations: int
    hunt_iterations: int
    acks: tuple[int, int]
    campaigns: tuple[str, ...] = CAMPAIGNS
    detect_iterations: int = 0
    hunts: list[tuple[str, str]] = field(default_factory=list)  # (bug, campaign)


@dataclass
class Results:
    campaigns: list[CampaignResult] = field(default_factory=list)
    hunts: list[CampaignResult] = field(default_factory=list)
    detection: DetectionResult | None = None
    elapsed_s: float = 0.0

    def rolling(self) -> CampaignResult | None:
        return next((r for r in self.campaigns if r.campaign == "rolling"), None)

    def caught_as_expected(self) -> set[str]:
        """The bugs their first catcher caught for the reason they break (CAUGHT_FOR)."""
        return {
            h.planted_bugs[0]
            for h in self.hunts
            if h.campaign == CATCHERS[h.planted_bugs[0]][0] and caught_as_expected(h)
        }

    def caught_by(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {bug: [] for bug in PLANTED_BUGS}
        for hunt in self.hunts:
            if hunt.detected:
                out[hunt.planted_bugs[0]].append(hunt.campaign)
        return out


def _progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


async def run(plan: Plan, root: Path) -> Results:
    results = Results()
    started = time.perf_counter()
    for index, name in enumerate(CAMPAIGNS):
        if name not in plan.campaigns:
            continue
        settings = CampaignSettings(
            iterations=plan.iterations,
            seed=plan.seed + index,
            acks_min=plan.acks[0],
            acks_max=plan.acks[1],
            progress=_progress,
        )
        print(
            f"campaign {name}: {plan.iterations} iterations, seed {settings.seed}", file=sys.stderr
        )
        result = await run_campaign(name, root / name, settings)
        print(result.line(), file=sys.stderr, flush=True)
        results.campaigns.append(result)
    for index, (bug, name) in enumerate(plan.hunts):
        print(f"hunt {bug} with {name}", file=sys.stderr, flush=True)
        hunt = await hunt_planted_bug(
            bug,
            name,
            root / f"hunt-{bug}-{name}",
            seed=plan.seed + 100 + index,
            # The first catcher, which must catch the bug, gets the tests' bound.
            iterations=max(plan.hunt_iterations, HUNT_ITERATIONS_FIRST_CATCHER)
            if name == CATCHERS[bug][0]
            else plan.hunt_iterations,
        )
        print(hunt.line()[:400], file=sys.stderr, flush=True)
        results.hunts.append(hunt)
    if plan.detect_iterations:
        print(f"detection: {plan.detect_iterations} link deaths, no host writes", file=sys.stderr)
        results.detection = await measure_detection(
            root / "detection", iterations=plan.detect_iterations, seed=plan.seed + 200
        )
        print(f"detection: {results.detection}"[:600], file=sys.stderr, flush=True)
    results.elapsed_s = time.perf_counter() - started
    return results


def _table(plan: Plan, results: Results, load: str) -> str:
    caught = results.caught_by()
    header = (
        f"{'campaign':<16}{'iterations':>11}{'faults':>8}{'checks passed':>15}"
        f"{'acked lost':>12}{'inconsistent':>14}{'bugs caught':>13}{'seconds':>9}"
    )
    lines = [
        f"fault campaigns ({'quick' if plan.quick else 'full'}, seed {plan.seed}, "
        f"loop {aio.loop_name()}, load {load})",
        header,
        "-" * len(header),
    ]
    for r in results.campaigns:
        bugs = sorted(bug for bug, names in caught.items() if r.campaign in names)
        lines.append(
            f"{r.campaign:<16}{r.iterations:>11}{r.faults_injected:>8}"
            f"{f'{r.checks_passed}/{r.checks}':>15}{r.acked_writes_lost:>12}"
            f"{r.inconsistent_secondaries:>14}{len(bugs):>13}{r.elapsed_s:>9.1f}"
        )
    for r in results.campaigns:
        for finding in r.findings[:FINDINGS_SHOWN_MAX]:
            lines.append(f"  {r.campaign}: {finding[:300]}")
        if r.harness_error:
            lines.append(f"  {r.campaign}: harness error: {r.harness_error[:300]}")
    if results.hunts:
        lines += [
            "",
            f"{'planted bug':<28}{'campaign':<16}{'caught':>8}{'iterations':>12}  first finding",
        ]
    for h in results.hunts:
        first = (h.findings[0] if h.findings else h.harness_error or "-")[:90]
        lines.append(
            f"{h.planted_bugs[0]:<28}{h.campaign:<16}{'yes' if h.detected else 'no':>8}"
            f"{h.iterations:>12}  {first}"
        )
    figures = _rolling_figures(results)
    if figures:
        rolling = results.rolling()
        faults = Counter(f.split()[0] for f in rolling.faults) if rolling else Counter()
        lines += [
            "",
            "rolling: a group over 3 primaries frozen by the controllers alone "
            f"(faults: {', '.join(f'{k} {v}' for k, v in sorted(faults.items())) or '-'})",
            "  (ms; freeze = first hold line to the last pair sealed, arrival times at the "
            "harness's subscriber)",
        ]
        lines += [f"  {key:<28}{_show(value):>12}" for key, value in figures.items()]
        if results.detection is not None:
            d = results.detection
            kinds = ", ".join(sorted({f.split()[0] for f in d.faults}))
            lines.append(
                f"  detection phase (no host writes): {len(d.detect_ms)}/{len(d.faults)} "
                f"link deaths detected ({kinds})"
            )
            lines += [f"  detection: {f[:300]}" for f in d.findings[:FINDINGS_SHOWN_MAX]]
            if d.harness_error:
                lines.append(f"  detection: harness error: {d.harness_error[:300]}")
    return "\n".join(lines)


def _show(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _rolling_figures(results: Results) -> dict[str, Any]:
    """The rolling campaign's figures (empty when it did not run)."""
    rolling, detection = results.rolling(), results.detection
    figures: dict[str, Any] = {}
    if rolling is not None:
        figures.update(
            rolling_iterations=rolling.iterations,
            rolling_inconsistent=rolling.inconsistent_secondaries,
            rolling_findings=len(rolling.findings),
            rolling_freezes=len(rolling.freeze_ms),
            freeze_ms_p50=round(percentile(list(rolling.freeze_ms), 0.50), 1),
            freeze_ms_p99=round(percentile(list(rolling.freeze_ms), 0.99), 1),
            freeze_write_stall_p99_ms=round(
                percentile(list(rolling.freeze_write_latencies_ms), 0.99), 1
            ),
            freeze_issued_write_p99_ms=round(
                percentile(list(rolling.freeze_issued_latencies_ms), 0.99), 1
            ),
            freeze_window_writes=len(rolling.freeze_write_latencies_ms),
        )
    if detection is not None:
        figures.update(
            detect_ms_p50=round(percentile(list(detection.detect_ms), 0.50), 1),
            detect_ms_max=round(max(detection.detect_ms, default=0.0), 1),
        )
    return figures


def _async_figures(results: Results) -> dict[str, Any]:
    """The async_disaster campaign's figures (empty when it did not run): recoveries at the
    consistency time C, and how many found the secondary not a consistent cut at C."""
    found = next((r for r in results.campaigns if r.campaign == "async_disaster"), None)
    if found is None:
        return {}
    return {
        "async_disaster_iterations": found.iterations,
        "async_disaster_inconsistent": found.inconsistent_secondaries,
        "async_disaster_findings": len(found.findings),
    }


def _result_json(plan: Plan, results: Results, load: list[float]) -> dict[str, Any]:
    campaigns = results.campaigns
    caught = results.caught_by()
    return {
        "iterations": sum(r.iterations for r in campaigns),
        "faults_injected": sum(r.faults_injected for r in campaigns),
        "acked_writes_lost": sum(r.acked_writes_lost for r in campaigns),
        "inconsistent_secondaries": sum(r.inconsistent_secondaries for r in campaigns),
        "planted_bugs": len(PLANTED_BUGS),
        "planted_bugs_caught": len(results.caught_as_expected()),
        "checks": sum(r.checks for r in campaigns),
        "checks_passed": sum(r.checks_passed for r in campaigns),
        "harness_errors": sum(1 for r in campaigns if r.harness_error),
        "writes_acked": sum(r.writes_acked for r in campaigns),
        "caught_by": caught,
        "per_campaign": {
            r.campaign: {
                "iterations": r.iterations,
                "faults_injected": r.faults_injected,
                "checks": r.checks,
                "checks_passed": r.checks_passed,
                "acked_writes_lost": r.acked_writes_lost,
                "inconsistent_secondaries": r.inconsistent_secondaries,
                "seconds": round(r.elapsed_s, 2),
            }
            for r in campaigns
        },
        **_rolling_figures(results),
        **_async_figures(results),
        "rolling_findings_text": [f[:300] for f in r.findings] if (r := results.rolling()) else [],
        "elapsed_s": round(results.elapsed_s, 2),
        "seed": plan.seed,
        "quick": plan.quick,
        "loop": aio.loop_name(),
        "load_1m_start": load[0],
        "load_1m_end": load[1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/faults.py")
    parser.add_argument("--quick", action="store_true", help="a few iterations; under 2 minutes")
    parser.add_argument("--seed", type=int, default=SEED_DEFAULT)
    parser.add_argument("--iterations", type=int, help="iterations per campaign")
    parser.add_argument("--campaign", choices=CAMPAIGNS, help="run this campaign only")
    parser.add_argument(
        "--detect-iterations", type=int, help="link deaths timed with no host writes"
    )
    args = parser.parse_args(argv)
    quick: bool = args.quick
    campaigns = (args.campaign,) if args.campaign else CAMPAIGNS
    detect = DETECT_ITERATIONS_QUICK if quick else DETECT_ITERATIONS_FULL
    plan = Plan(
        quick=quick,
        seed=args.seed,
        iterations=args.iterations or (ITERATIONS_QUICK if quick else ITERATIONS_FULL),
        hunt_iterations=HUNT_ITERATIONS_QUICK if quick else HUNT_ITERATIONS_FULL,
        acks=ACKS_QUICK if quick else ACKS_FULL,
        campaigns=campaigns,
        detect_iterations=(args.detect_iterations if args.detect_iterations is not None else detect)
        if "rolling" in campaigns
        else 0,
    )
    plan.hunts = [
        (bug, name)
        for bug in PLANTED_BUGS
        for name in ((CATCHERS[bug][0],) if quick else CAMPAIGNS)
        if name in campaigns
    ]
    print(f"seed {plan.seed}", flush=True)
    load_start = load_average()
    results = main_guard("remcopy-bench-faults-", lambda root: run(plan, root))
    load = [load_start, load_average()]
    print(_table(plan, results, f"{load[0]:.2f} -> {load[1]:.2f}"))
    print("RESULT " + json.dumps(_result_json(plan, results, load), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
