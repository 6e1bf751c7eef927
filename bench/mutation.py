# Benchmark: mutation testing of the consistency checker and the pair state machine.
#
# What is measured, and why: a proof is as good as the bugs it would catch. The checker
# (src/remcopy/workload/checker.py) decides whether an image is consistent and the state
# machine (src/remcopy/states.py) decides every move a pair makes; a rule of either that no
# test needs could be wrong unnoticed. mutmut (pyproject.toml [tool.mutmut]) makes small
# changes ("mutants") to these two files, one at a time, and runs their fast unit tests
# (tests/unit/test_020_states.py, test_700_checker.py, test_705_checker_rules.py) against
# each: a mutant is killed when some test fails (or hangs: a timeout counts as killed). A
# surviving mutant is either a gap in the tests, or equivalent (no input can tell it from the
# original); the equivalent ones are listed in EQUIVALENT below with why, and in
# docs/consistency.md ("Mutation testing").
#
# Figures, per file: mutants, killed, survived, equivalent, and the score
# killed / (mutants - equivalent). A surviving mutant that is not listed is printed with its
# diff. A listed mutant that was killed or no longer exists makes the list stale: it is
# printed too (the mutant names follow the source, so an edit of the file renumbers them).
#
# Run: .venv/bin/python bench/mutation.py [--reuse] [--max-children N]. It runs mutmut under
# `nice` in a fresh `mutants/` folder (about 2 to 5 minutes on this machine with one child);
# --reuse reads the results of the last run instead. Never part of the test suite. The last
# line is `RESULT {json}` with checker_mutation_score and states_mutation_score.
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
MUTMUT: Final = Path(sys.executable).with_name("mutmut")
MODULES: Final = {"checker": "remcopy.workload.checker.", "states": "remcopy.states."}
KILLED: Final = frozenset({"killed", "timeout"})

_C = "remcopy.workload.checker."
EQUIVALENT: Final[dict[str, str]] = {
    _C + "xǁ_ChainJudgeǁ__init____mutmut_9": (
        "self.plan = None: _accept_records assigns the plan before anything reads it"
    ),
    _C + "xǁ_ChainJudgeǁ_accept_records__mutmut_34": (
        "top defaults to 1: the plan is only made longer by one write, and nothing reads "
        "past the prefix + 1"
    ),
    _C + "xǁ_ChainJudgeǁ_accept_records__mutmut_47": (
        "plan of max(top, logged) + 2 writes: one more planned write than needed is never read"
    ),
    _C + "xǁ_ChainJudgeǁ_in_flight__mutmut_5": (
        "prefix > len(plan): the prefix is at most len(plan) - 1 (the plan has top + 1 writes)"
    ),
    _C + "xǁ_ChainJudgeǁ_check_locations__mutmut_18": (
        "always expected.seq: an accepted record sits where the plan puts its seq, so the "
        "latest write of the prefix to that location exists (expected is never None there)"
    ),
    _C + "xǁ_ChainJudgeǁ_check_locations__mutmut_31": (
        "damaged or ours: decode_slot sets ours only on CORRUPT and DAMAGED slots"
    ),
    _C + "xǁ_ChainJudgeǁ_check_indexes__mutmut_4": (
        "kind is not INDEX and names is None: a data record never has names, an index "
        "record always has them (decode_slot)"
    ),
    _C + "xǁ_ChainJudgeǁ_check_indexes__mutmut_20": (
        "(offset + start) % slot_bytes: start is a multiple of slot_bytes (regions are whole "
        "slots), so both sums have the same remainder"
    ),
    _C + "xǁ_ChainJudgeǁ_check_indexes__mutmut_47": (
        "damaged or ours: as in _check_locations, ours implies CORRUPT or DAMAGED"
    ),
    _C + "xǁ_ChainJudgeǁ_check_indexes__mutmut_65": (
        "mark=None: the index check runs after the location check, the only reader of marks"
    ),
    _C + "xǁ_ChainJudgeǁ_check_indexes__mutmut_70": "mark left at True: as mutmut_65",
    _C + "xǁ_ChainJudgeǁ_check_indexes__mutmut_72": "mark=True: as mutmut_65",
    _C + "x__cross_chain__mutmut_20": (
        "the default edge's chain: used only in the no-common-time message, which needs a "
        "present write (lo.ns = 0 is below every acknowledgement)"
    ),
    _C + "x__cross_chain__mutmut_21": "the default edge's seq: as mutmut_20",
    _C + "x__cross_chain__mutmut_26": "the default edge's chain: as mutmut_20",
    _C + "x__cross_chain__mutmut_27": "the default edge's chain: as mutmut_20",
    _C + "x__cross_chain__mutmut_28": "the default edge's seq: as mutmut_20",
}


def run_mutmut(max_children: int) -> float:
    """A fresh mutation run under nice; returns its wall time in seconds."""
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    started = time.monotonic()
    log = ROOT / "mutants.log"
    with log.open("w") as out:
        done = subprocess.run(
            ["nice", "-n", "10", str(MUTMUT), "run", "--max-children", str(max_children)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        sys.exit(f"mutation: mutmut run failed with exit code {done.returncode}: see {log}")
    log.unlink()
    return time.monotonic() - started


def results() -> dict[str, str]:
    """mutant name -> status (killed, survived, timeout, no tests, ...) of the last run."""
    out = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    statuses: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            statuses[name] = status
    if not statuses:
        sys.exit("mutation: no results: run without --reuse first")
    return statuses


def diff(name: str) -> str:
    shown = subprocess.run(
        [str(MUTMUT), "show", name], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout
    return "\n".join(
        f"      {line}"
        for line in shown.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reuse", action="store_true", help="report the last run's results")
    parser.add_argument("--max-children", type=int, default=1)
    args = parser.parse_args()
    seconds = None if args.reuse else run_mutmut(args.max_children)
    statuses = results()
    result: dict[str, object] = {}
    print(f"{'file':<10}{'mutants':>9}{'killed':>8}{'survived':>10}{'equivalent':>12}{'score':>8}")
    gaps: list[str] = []
    for short, prefix in MODULES.items():
        mine = {n: s for n, s in statuses.items() if n.startswith(prefix)}
        counts = Counter(mine.values())
        killed = sum(counts[s] for s in KILLED)
        equivalent = [n for n, s in mine.items() if s not in KILLED and n in EQUIVALENT]
        gaps += [n for n, s in mine.items() if s not in KILLED and n not in EQUIVALENT]
        judged = len(mine) - len(equivalent)
        score = round(killed / judged, 4) if judged else 0.0
        print(
            f"{short:<10}{len(mine):>9}{killed:>8}{len(mine) - killed:>10}"
            f"{len(equivalent):>12}{score:>8.4f}"
        )
        result |= {
            f"{short}_mutants": len(mine),
            f"{short}_killed": killed,
            f"{short}_equivalent": len(equivalent),
            f"{short}_mutation_score": score,
        }
    stale = [n for n in EQUIVALENT if statuses.get(n) in KILLED or n not in statuses]
    if gaps:
        print("\nsurviving mutants no test kills (not equivalent):")
        for name in gaps:
            print(f"  {name}: {statuses[name]}\n{diff(name)}")
    if stale:
        print("\nlisted as equivalent but killed or gone (the list is stale):")
        print("\n".join(f"  {name}" for name in stale))
    result |= {"survivors_not_equivalent": len(gaps), "equivalent_list_stale": len(stale)}
    if seconds is not None:
        result["seconds"] = round(seconds, 1)
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
