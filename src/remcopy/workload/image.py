# Which image the checker reads: a group's primaries, its secondaries, or a shadow copy of its
# secondaries (the tertiaries), read as one host through that host's channels.
#
# Why: the checker reasons about the volumes the workload wrote (the primaries, by hardware
# address). Any other image is the same volumes somewhere else; this module is the one place
# that knows where, so the checker stays pure and the same code checks all three images.
#
# Rules this module keeps:
# - The primaries are read through the pair's primary controller, the secondaries through its
#   secondary controller (the acting host's names for them, from the group map).
# - A shadow copy runs on the secondary's controller (docs/replication.md, section 13), so a
#   tertiary must be on the same controller as the secondary it copies; it is read through the
#   secondary controller's channel. Which tertiary copies which secondary is given as a map
#   (`parse_shadow_map`), since shadow copies are not pairs the catalog keeps.
# - A volume this host cannot reach is refused with an InputError naming the pair, before any
#   read (`check_routes`).
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from pathlib import Path

from remcopy.errors import InputError, InvalidIdentifier
from remcopy.groups.model import Group, GroupPair
from remcopy.host.session import HostSession
from remcopy.ids import HardwareAddress

SHADOW_MAP_LINES_MAX = 1_000_000


class Image(enum.Enum):
    PRIMARY = "primaries"
    SECONDARY = "secondaries"
    SHADOW = "shadow copies"


class ImageReader:
    """`await reader(primary_address, offset, length)` reads that volume's image."""

    def __init__(
        self,
        session: HostSession,
        group: Group,
        image: Image = Image.PRIMARY,
        *,
        tertiaries: Mapping[HardwareAddress, HardwareAddress] | None = None,
    ) -> None:
        self.session, self.group, self.image = session, group, image
        self.tertiaries = dict(tertiaries or {})
        if image is Image.SHADOW and not self.tertiaries:
            raise InputError("verify: a shadow image needs the map of secondary -> tertiary")
        # A workload's log names the volumes it wrote: the primaries as the pairs copied then.
        # After a failback (or before the primary role went home) those are the secondaries
        # now, so either end finds the pair, and the image is taken as the pairs copy now.
        self._pairs = {pair.secondary: pair for pair in group.pairs}
        self._pairs.update({pair.primary: pair for pair in group.pairs})
        self._routes: dict[HardwareAddress, tuple[str, HardwareAddress]] = {}
        self.reads = 0

    def __repr__(self) -> str:
        return f"<ImageReader {self.describe()} reads={self.reads}>"

    def describe(self) -> str:
        return f"{self.image.value} of group {self.group.name}"

    def locate(self, primary: HardwareAddress) -> HardwareAddress:
        """The address of the image of the primary volume `primary`."""
        return self._route(primary)[1]

    def name(self, primary: HardwareAddress) -> str:
        """How messages name a volume: its image's address."""
        try:
            return str(self.locate(primary))
        except InputError:
            return str(primary)

    def check_routes(self, primaries: Iterable[HardwareAddress]) -> None:
        """Refuse up front, naming every one, the volumes this host cannot read."""
        problems = []
        for primary in primaries:
            try:
                self._route(primary)
            except InputError as exc:
                problems.append(str(exc))
        if problems:
            raise InputError("verify: " + "; ".join(problems))

    async def __call__(self, primary: HardwareAddress, offset: int, length: int) -> bytes:
        controller, address = self._route(primary)
        self.reads += 1
        return await self.session.channels[controller].read(address.device_key, offset, length)

    def _route(self, primary: HardwareAddress) -> tuple[str, HardwareAddress]:
        route = self._routes.get(primary)
        if route is None:
            route = self._routes[primary] = self._find(primary)
        return route

    def _find(self, primary: HardwareAddress) -> tuple[str, HardwareAddress]:
        pair = self._pairs.get(primary)
        if pair is None:
            raise InputError(f"{primary} is not a volume of group {self.group.name}")
        if self.image is Image.PRIMARY:
            return self._reachable(pair, pair.primary_controller, "primary"), pair.primary
        controller = self._reachable(pair, pair.secondary_controller, "secondary")
        if self.image is Image.SECONDARY:
            return controller, pair.secondary
        tertiary = self.tertiaries.get(pair.secondary)
        if tertiary is None:
            raise InputError(
                f"{pair.name}: the shadow map names no tertiary for the secondary {pair.secondary}"
            )
        if tertiary.serial != pair.secondary.serial:
            raise InputError(
                f"{pair.name}: tertiary {tertiary} is not on the secondary's controller "
                f"(serial {pair.secondary.serial}): a shadow copy runs there"
            )
        return controller, tertiary

    def _reachable(self, pair: GroupPair, controller: str, side: str) -> str:
        if not controller or controller not in self.session.channels:
            address = pair.primary if side == "primary" else pair.secondary
            raise InputError(
                f"{pair.name}: host {self.session.definition.name} has no path to the {side} "
                f"{address}"
            )
        return controller


def parse_shadow_map(path: Path) -> dict[HardwareAddress, HardwareAddress]:
    """Read `SECONDARY TERTIARY` lines (space, comma or `->` between; `#` comments).

    Every bad line is named at once; a secondary listed twice is an error.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"shadow map {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"shadow map {path}: not UTF-8 text") from None
    out: dict[HardwareAddress, HardwareAddress] = {}
    problems = []
    for number, raw in enumerate(text.splitlines()[:SHADOW_MAP_LINES_MAX], start=1):
        line = raw.split("#", 1)[0].replace("->", " ").replace(",", " ").strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            problems.append(f"line {number}: expected SECONDARY TERTIARY (got {raw.strip()!r})")
            continue
        try:
            secondary, tertiary = (HardwareAddress.parse(f) for f in fields)
        except InvalidIdentifier as exc:
            problems.append(f"line {number}: {exc}")
            continue
        if secondary in out:
            problems.append(f"line {number}: secondary {secondary} is listed twice")
            continue
        out[secondary] = tertiary
    if problems:
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise InputError(f"shadow map {path}: " + "; ".join(problems[:10]) + more)
    if not out:
        raise InputError(f"shadow map {path}: no SECONDARY TERTIARY line")
    return out
