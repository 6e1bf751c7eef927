"""remcopy: disaster-recovery remote copy with provable consistency."""

__version__ = "0.1.0"
