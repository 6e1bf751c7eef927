# The demo's two-site world, written as ordinary files an administrator can read and reuse.
#
# Why: the demo must run on a fresh machine with nothing set up by hand, and its kept world
# (`remcopy demo --keep DIR`) is what the README's walk-through uses. So everything is real:
# controller config files, host definition files, a group definition, a catalog file.
#
# Layout for N pairs over P primary controllers (2 up to 200 pairs, else 4):
#   primary site    cntlaI  serial 64015+I  LSS 0A.. (256 volumes each), volsers PIkkkk
#   secondary site  cntlbI  serial 65015+I  LSS 20.. secondaries SIkkkk, LSS 40.. tertiaries TIkkkk
#   hosta (primary site): primaries at 1000+0400*I, secondaries (offline) at 3000+0400*I
#   hostb (DR site): secondaries at A000+0400*I, tertiaries at C000+0400*I,
#                    primaries (offline) at E000+0400*I
# Every primary's replication link goes through a FaultLink proxy, so the drill can cut one.
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from remcopy import pki
from remcopy.controller.process import (
    ControllerSpec,
    PeerSpec,
    VolumeSpec,
    free_port,
    write_private,
)

VOLUME_BYTES = 1024 * 1024
PER_CONTROLLER_MAX = 1024
# Fresh secrets for every demo (256 random bits each), kept in 0600 files under secrets/.
HOSTS = {name: secrets.token_hex(32) for name in ("hosta", "hostb")}
LINK_SECRET = secrets.token_hex(32)


@dataclass
class Site:
    """Where one controller index's volumes are: counts and LSS bases."""

    index: int
    count: int

    @property
    def lss_chunks(self) -> list[tuple[int, int]]:
        """(first volume k, volumes) per LSS of 256 devices."""
        return [(k, min(256, self.count - k)) for k in range(0, self.count, 256)]


@dataclass
class DemoWorld:
    root: Path
    pairs: int
    primaries: int
    sites: list[Site] = field(default_factory=list)
    primary_ports: list[int] = field(default_factory=list)
    secondary_ports: list[int] = field(default_factory=list)
    link_ports: list[int] = field(default_factory=list)

    @property
    def catalog(self) -> Path:
        return self.root / "remcopy.db"

    def config(self, name: str) -> Path:
        return self.root / "controllers" / f"{name}.toml"

    def host_file(self, name: str) -> Path:
        return self.root / "hosts" / f"{name}.toml"

    @property
    def pki(self) -> pki.Site:
        """The demo site's CA and certificates (made on first use): TLS on every link."""
        return pki.Site(self.root / "pki")

    @property
    def group_file(self) -> Path:
        return self.root / "groups" / "drill.toml"

    @property
    def shadow_map(self) -> Path:
        return self.root / "groups" / "drill-shadow.map"


def plan_world(root: Path, pairs: int) -> DemoWorld:
    primaries = 2 if pairs <= 200 else 4
    if pairs < 1 or pairs > primaries * PER_CONTROLLER_MAX:
        raise ValueError(f"--pairs must be from 1 to {4 * PER_CONTROLLER_MAX} (got {pairs})")
    world = DemoWorld(root=root, pairs=pairs, primaries=primaries)
    base, extra = divmod(pairs, primaries)
    world.sites = [Site(index=i, count=base + (1 if i < extra else 0)) for i in range(primaries)]
    world.primary_ports = [free_port() for _ in range(primaries)]
    world.secondary_ports = [free_port() for _ in range(primaries)]
    return world


def _volumes(site: Site, lss_base: int, prefix: str) -> list[VolumeSpec]:
    out = []
    for chunk, (first, count) in enumerate(site.lss_chunks):
        for c in range(count):
            k = first + c
            out.append(
                VolumeSpec(
                    lss=lss_base + chunk,
                    cca=c,
                    volser=f"{prefix}{site.index}{k:04X}",
                    size_bytes=VOLUME_BYTES,
                )
            )
    return out


def controller_specs(world: DemoWorld, link_endpoints: list[str]) -> list[ControllerSpec]:
    """Primary specs (peer address = the link proxy) and secondary specs."""
    specs = []
    site_pki = world.pki
    for site in world.sites:
        i = site.index
        lss_count = len(site.lss_chunks)
        specs.append(
            ControllerSpec(
                name=f"cntla{i}",
                serial=64015 + i,
                data_dir=world.root / "data" / f"cntla{i}",
                listen=f"127.0.0.1:{world.primary_ports[i]}",
                lss={0x0A + n: 0x1A00 + n for n in range(lss_count)},
                volumes=_volumes(site, 0x0A, "P"),
                hosts=dict(HOSTS),
                site=site_pki,
                secret_folder=world.root / "secrets",
                peers=[
                    PeerSpec(
                        name=f"cntlb{i}",
                        serial=65015 + i,
                        address=link_endpoints[i],
                        secret=LINK_SECRET,
                    ),
                    # Sibling primaries: the group freezes over these links by itself.
                    *(
                        PeerSpec(
                            name=f"cntla{other.index}",
                            serial=64015 + other.index,
                            address=f"127.0.0.1:{world.primary_ports[other.index]}",
                            secret=LINK_SECRET,
                        )
                        for other in world.sites
                        if other.index != i
                    ),
                ],
            )
        )
        specs.append(
            ControllerSpec(
                name=f"cntlb{i}",
                serial=65015 + i,
                data_dir=world.root / "data" / f"cntlb{i}",
                listen=f"127.0.0.1:{world.secondary_ports[i]}",
                lss={
                    **{0x20 + n: 0x2B00 + n for n in range(lss_count)},
                    **{0x40 + n: 0x4B00 + n for n in range(lss_count)},
                },
                volumes=_volumes(site, 0x20, "S") + _volumes(site, 0x40, "T"),
                hosts=dict(HOSTS),
                site=site_pki,
                secret_folder=world.root / "secrets",
                peers=[
                    PeerSpec(
                        name=f"cntla{i}",
                        serial=64015 + i,
                        address=f"127.0.0.1:{world.primary_ports[i]}",
                        secret=LINK_SECRET,
                    ),
                    # Sibling secondaries: an async group's consistency time is agreed here.
                    *(
                        PeerSpec(
                            name=f"cntlb{other.index}",
                            serial=65015 + other.index,
                            address=f"127.0.0.1:{world.secondary_ports[other.index]}",
                            secret=LINK_SECRET,
                        )
                        for other in world.sites
                        if other.index != i
                    ),
                ],
            )
        )
    return specs


def _paths(
    world: DemoWorld,
    *,
    role_lss: int,
    ssid_base: int,
    number_base: int,
    controller: str,
    online: bool,
) -> list[str]:
    lines = []
    for site in world.sites:
        for chunk, (first, count) in enumerate(site.lss_chunks):
            start = number_base + 0x400 * site.index + first
            lines += [
                "[[paths]]",
                f'devices = "{start:04X}-{start + count - 1:04X}"',
                f'controller = "{controller}{site.index}"',
                f'ssid = "{ssid_base + chunk:04X}"',
                f'lss = "{role_lss + chunk:02X}"',
                'cca = "00"',
                f"online = {'true' if online else 'false'}",
                "",
            ]
    return lines


def _secret_file(world: DemoWorld, name: str, secret: str) -> Path:
    """A host's secret in its own 0600 file (the controllers have theirs)."""
    path = world.root / "secrets" / f"{name}.secret"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, secret + "\n")
    return path


def host_files(world: DemoWorld) -> dict[str, str]:
    out = {}
    site_pki = world.pki
    for name, secret in HOSTS.items():
        files = site_pki.files(name, "host")
        lines = [
            "[tls]",
            f'ca = "{files.ca}"',
            f'cert = "{files.cert}"',
            f'key = "{files.key}"',
            "",
            "[host]",
            f'name = "{name}"',
            f'secret_file = "{_secret_file(world, name, secret)}"',
            "",
        ]
        for i in range(world.primaries):
            lines += [
                "[[controllers]]",
                f'name = "cntla{i}"',
                f'address = "127.0.0.1:{world.primary_ports[i]}"',
                "",
                "[[controllers]]",
                f'name = "cntlb{i}"',
                f'address = "127.0.0.1:{world.secondary_ports[i]}"',
                "",
            ]
        if name == "hosta":
            lines += _paths(
                world,
                role_lss=0x0A,
                ssid_base=0x1A00,
                number_base=0x1000,
                controller="cntla",
                online=True,
            )
            lines += _paths(
                world,
                role_lss=0x20,
                ssid_base=0x2B00,
                number_base=0x3000,
                controller="cntlb",
                online=False,
            )
        else:
            lines += _paths(
                world,
                role_lss=0x20,
                ssid_base=0x2B00,
                number_base=0xA000,
                controller="cntlb",
                online=True,
            )
            lines += _paths(
                world,
                role_lss=0x40,
                ssid_base=0x4B00,
                number_base=0xC000,
                controller="cntlb",
                online=True,
            )
            lines += _paths(
                world,
                role_lss=0x0A,
                ssid_base=0x1A00,
                number_base=0xE000,
                controller="cntla",
                online=False,
            )
        out[name] = "\n".join(lines)
    return out


def group_text(world: DemoWorld) -> tuple[str, str]:
    """The group definition (by volser, in a CSV) and the CSV itself."""
    rows = ["# primary volser, secondary volser"]
    for site in world.sites:
        rows += [f"P{site.index}{k:04X},S{site.index}{k:04X}" for k in range(site.count)]
    toml = "\n".join(
        [
            "[group]",
            'name = "DRILL"',
            'mode = "sync"',
            "consistency_group = true",
            "margin_ms = 50",
            'csv = "drill-pairs.csv"',
            "",
        ]
    )
    return toml, "\n".join(rows) + "\n"


def write_files(world: DemoWorld, link_endpoints: list[str]) -> list[ControllerSpec]:
    specs = controller_specs(world, link_endpoints)
    for spec in specs:
        spec.write(world.config(spec.name))
    for name, text in host_files(world).items():
        path = world.host_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, text)  # a host file holds its secret
    toml, csv = group_text(world)
    world.group_file.parent.mkdir(parents=True, exist_ok=True)
    world.group_file.write_text(toml)
    (world.group_file.parent / "drill-pairs.csv").write_text(csv)
    return specs
