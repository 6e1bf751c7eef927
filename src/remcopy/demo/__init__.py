"""The demo: a whole disaster-recovery drill on a two-site world built from scratch."""

from remcopy.demo.drill import Step, run_drill

__all__ = ["Step", "run_drill"]
