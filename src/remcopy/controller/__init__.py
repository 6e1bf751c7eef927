"""Controllers: volumes, pair states, and the asyncio servers that expose them.

Import the modules themselves (controller.core, controller.server, ...): this package imports
nothing, so a host-side command that needs only controller.config's types does not load the
controller's servers."""
