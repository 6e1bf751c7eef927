# Three controllers and two hosts that see some of the same volumes under other numbers.
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import SECRET, controller_spec, host_tls_toml, secret_file_line
from remcopy.controller.process import TESTING_ENV, ControllerProcess, free_port
from remcopy.host.definition import HostDefinition, load_host_definition

CONTROLLERS = (
    ("cntl1", 64015, 0x0A, 0x1A00),
    ("cntl2", 64016, 0x0B, 0x1B00),
    ("cntl3", 64017, 0x0C, 0x1C00),
)


@dataclass
class ScanWorld:
    root: Path
    procs: dict[str, ControllerProcess]
    host_a: Path
    host_b: Path

    def a(self) -> HostDefinition:
        return load_host_definition(self.host_a)

    def b(self) -> HostDefinition:
        return load_host_definition(self.host_b)


def host_toml(
    name: str,
    addresses: dict[str, str],
    paths: list[tuple[str, str, int, int, int, bool]],
    secret: str = SECRET,
) -> str:
    lines = [host_tls_toml(name), "[host]", f'name = "{name}"', secret_file_line(name, secret), ""]
    for controller, address in addresses.items():
        lines += ["[[controllers]]", f'name = "{controller}"', f'address = "{address}"', ""]
    for devices, controller, ssid, lss, cca, online in paths:
        lines += [
            "[[paths]]",
            f'devices = "{devices}"',
            f'controller = "{controller}"',
            f'ssid = "{ssid:04X}"',
            f'lss = "{lss:02X}"',
            f'cca = "{cca:02X}"',
            f"online = {'true' if online else 'false'}",
            "",
        ]
    return "\n".join(lines)


async def build(root: Path, start, *, slow: str | None = None, volumes: int = 8) -> ScanWorld:
    procs = {}
    ports = {name: free_port() for name, *_ in CONTROLLERS}
    for name, serial, lss, ssid in CONTROLLERS:
        spec = controller_spec(
            root,
            name,
            serial,
            ssid=ssid,
            lss=lss,
            volumes=volumes,
            size_bytes=1 << 20,
            prefix=f"V{name[-1]}",
            hosts={"hosta": SECRET, "hostb": SECRET},
        )
        spec.listen = f"127.0.0.1:{ports[name]}"
        if name == slow:  # identify_delay_s is test-only: that controller needs TESTING_ENV
            spec.identify_delay_s = 1.0
            procs[name] = await start(spec, extra_env=TESTING_ENV)
        else:
            procs[name] = await start(spec)
    addresses = {name: p.endpoint for name, p in procs.items()}
    a = root / "hosta.toml"
    a.write_text(
        host_toml(
            "hosta",
            addresses,
            [
                (f"1A00-1A{volumes - 1:02X}", "cntl1", 0x1A00, 0x0A, 0, True),
                (f"1B00-1B{volumes - 1:02X}", "cntl2", 0x1B00, 0x0B, 0, True),
                ("1C00-1C03", "cntl3", 0x1C00, 0x0C, 0, False),
            ],
        )
    )
    b = root / "hostb.toml"
    b.write_text(
        host_toml(
            "hostb",
            {k: v for k, v in addresses.items() if k != "cntl2"},
            [
                (f"2A00-2A{volumes - 1:02X}", "cntl1", 0x1A00, 0x0A, 0, True),
                ("2C00-2C03", "cntl3", 0x1C00, 0x0C, 0, True),
            ],
        )
    )
    return ScanWorld(root=root, procs=procs, host_a=a, host_b=b)
