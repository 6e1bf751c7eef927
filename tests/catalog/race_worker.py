# One contender of a race between processes: `python race_worker.py ARGS...` imports remcopy's
# CLI, says "ready", waits for "go" on stdin, then runs `remcopy ARGS...` in this process. The
# test starts several, waits until all are ready and releases them together, so their catalog
# transactions overlap (start-up, a few hundred milliseconds, is not part of the race).
from __future__ import annotations

import sys

from remcopy.catalog import Catalog  # noqa: F401  (loaded before the start, not during it)
from remcopy.cli.main import main

if __name__ == "__main__":
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("race_worker: expected go on stdin")
    sys.argv = ["remcopy", *sys.argv[1:]]
    main()
