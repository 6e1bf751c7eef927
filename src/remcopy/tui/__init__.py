"""The full-screen operator interface: `remcopy tui`, the seed's panels 5A-5E."""

from remcopy.tui.app import RemcopyApp

__all__ = ["RemcopyApp"]
