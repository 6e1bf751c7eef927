"""Controllers: volumes, pair states, and the asyncio servers that expose them."""

from remcopy.controller.config import ControllerConfig, load_controller_config
from remcopy.controller.core import Controller
from remcopy.controller.server import ControllerServer, run_controller
from remcopy.controller.volume import Volume

__all__ = [
    "Controller",
    "ControllerConfig",
    "ControllerServer",
    "Volume",
    "load_controller_config",
    "run_controller",
]
