# The controller's configuration file: what it is, what it owns, who may talk to it.
#
# Why: a controller is started from one TOML file (`remcopy controller serve CONFIG`). The file
# is checked whole before anything starts — shape and types by pydantic, then the rules that
# span entries (duplicate CCA, duplicate volser, a volume in an undeclared LSS) — and every
# problem is reported at once with file, key path and value. `remcopy controller check` runs
# exactly this and nothing else.
#
#
# A config that holds secrets (hosts, peers) must be its user's alone: one that group or
# others may access is refused, naming the fix (`chmod 600`), as ssh refuses such a key. A
# config keeps no secret itself: each [[hosts]] and [[peers]] entry names a 0600 secret file
# (`secret_file`); an inline `secret = "..."` is refused, naming the fix.
#
# Test-only switches (planted bugs, injected volume faults, a slow identify) exist so the fault
# campaigns can prove they catch what they must. A production controller must never run with
# one because a config was copied from a test: a config that names any of TESTING_KEYS is
# refused unless the controller's environment holds REMCOPY_TESTING=1, which only tests set
# (DESIGN.md section 6, docs/security.md). The refusal happens before validation, so a refused
# volume_faults is never armed.
#
# Reference: docs/controller-config.md (every key, with an example).
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from remcopy import configfile, secretfiles
from remcopy.configfile import format_address
from remcopy.controller import atrest
from remcopy.controller.volume import (
    TRACK_SIZE_DEFAULT_BYTES,
    TRACK_SIZE_MAX_BYTES,
    TRACK_SIZE_MIN_BYTES,
    arm_volume_faults,
)
from remcopy.errors import ConfigError, InvalidIdentifier
from remcopy.ids import Volser, parse_serial
from remcopy.tls import TlsFiles


def _hex(digits: int, what: str) -> Any:
    # An explicit ASCII class: int(value, 16) alone would take "-1", "+1", " 1" and "١٢".
    pattern = re.compile(f"[0-9A-Fa-f]{{{digits}}}")

    def parse(value: object) -> int:
        if isinstance(value, str) and pattern.fullmatch(value):
            return int(value, 16)
        raise ValueError(f"{what} must be {digits} hex digits (got {value!r})")

    return BeforeValidator(parse)


def _volser(value: object) -> str:
    try:
        return str(Volser.parse(value))
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None


def _serial(value: object) -> int:
    try:
        return parse_serial(value)
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None


def _size(value: object) -> int:
    return configfile.parse_size(value)


def _address(value: object) -> tuple[str, int]:
    return configfile.parse_address(value)


def _secret(value: object) -> str:
    # The value is never echoed: an error message ends up in terminals and logs.
    if not isinstance(value, str):
        raise ValueError(f"secret must be a string (got a {type(value).__name__})")
    if len(value) < 8:
        raise ValueError(
            f"secret must be at least 8 characters (got {len(value)} characters, not shown)"
        )
    return value


# --- NBD export (docs/nbd.md) ---
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NBD_ALLOW_DEFAULT: tuple[str, ...] = ("127.0.0.1/32", "::1/128")


def _network(value: object) -> IpNetwork:
    # "10.0.0.0/8", "192.0.2.7" (one address), "::1"; host bits set is a mistake worth naming.
    if not isinstance(value, str):
        raise ValueError(f"expected an address or network such as '10.0.0.0/8' (got {value!r})")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"expected an address or network such as '10.0.0.0/8': {exc} (got {value!r})"
        ) from None


# --- end NBD export ---

Hex2 = Annotated[int, _hex(2, "value")]
Lss = Annotated[int, _hex(2, "lss")]
Cca = Annotated[int, _hex(2, "cca")]
Ssid = Annotated[int, _hex(4, "ssid")]
VolserText = Annotated[str, BeforeValidator(_volser)]
Serial = Annotated[int, BeforeValidator(_serial)]
Size = Annotated[int, BeforeValidator(_size)]
Address = Annotated[tuple[str, int], BeforeValidator(_address)]
Secret = Annotated[str, BeforeValidator(_secret)]
Network = Annotated[IpNetwork, BeforeValidator(_network)]  # NBD export


# --- TESTING ONLY switches (docs/security.md) ---
TESTING_ENV_VAR: Final = "REMCOPY_TESTING"
TESTING_KEYS: Final = (
    "planted_bugs",
    "planted_bug_every",
    "volume_faults",
    "identify_delay_s",
    "commit_pause_dir",
)
"""[controller] keys a config may hold only when the controller runs with REMCOPY_TESTING=1."""


def testing_allowed(environ: Mapping[str, str]) -> bool:
    """Whether this environment lets a config turn test-only switches on (exactly "1")."""
    return environ.get(TESTING_ENV_VAR) == "1"


def _testing_refused(data: dict[str, Any], source: str, environ: Mapping[str, str]) -> list[str]:
    """One problem per test-only key the config sets without the environment switch."""
    section = data.get("controller")
    if not isinstance(section, dict) or testing_allowed(environ):
        return []
    return [
        f"{source}: controller.{key}: for testing only: refused unless the controller runs "
        f"with {TESTING_ENV_VAR}=1 in its environment (remove the key from a production config)"
        for key in TESTING_KEYS
        if key in section
    ]


# --- end TESTING ONLY ---


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ControllerSection(_Strict):
    name: str = Field(min_length=1, max_length=64)
    serial: Serial
    listen: Address
    data_dir: Path
    track_size: Size = TRACK_SIZE_DEFAULT_BYTES
    format_missing: bool = False
    """Create a volume file that does not exist yet (never touches an existing one)."""
    shutdown_grace_s: float = Field(default=10.0, gt=0, le=600)
    ack_timeout_s: float = Field(default=5.0, gt=0, le=600)
    """A replication batch not confirmed this long counts as a link failure."""
    hold_s: float = Field(default=2.0, ge=0, le=600)
    """How long a consistency-group device holds host writes after a replication error."""
    heartbeat_interval_s: float = Field(default=0.5, gt=0, le=60)
    """How often each replication link with mirroring pairs is proven alive with no writes."""
    heartbeat_timeout_s: float = Field(default=2.0, gt=0, le=600)
    """A heartbeat not answered this long counts as a link failure (detection <= interval +
    timeout)."""
    link_start_grace_s: float = Field(default=30.0, ge=0, le=3600)
    """After a start, a replication link that was never connected may fail to connect for
    this long before its pairs count as failed (the site's controllers start in any order);
    a host write that needs the link does not wait for it."""
    freeze_margin_s: float = Field(default=0.25, gt=0, le=60)
    """A controller-initiated freeze seals the group at T = now + this (at least 4 round
    trips to the slowest sibling): every sibling must be armed before T."""
    watermark_interval_s: float = Field(default=0.1, gt=0, le=60)
    """Async consistency groups: how often a primary sends its watermark on each link that
    ships them, and a secondary moves the consistency time C and tells its sibling
    secondaries how far it has received (the RPO is about this plus the link's delay)."""
    rpo_alert_s: float | None = Field(default=None, gt=0, le=86400)
    """Async consistency groups, at a secondary: an `rpo` event when now - C goes over this
    (and one when it is back under); None: no such events."""
    max_lag_s: float | None = Field(default=None, gt=0, le=3600)
    """Async pairs: a host write to a device whose oldest unconfirmed update is older than
    this waits up to max_lag_delay_s for the lag to fall, then is answered busy (native;
    the host channel retries) or keeps waiting (NBD). None: the lag may grow without bound."""
    max_lag_delay_s: float = Field(default=0.05, gt=0, le=10)
    """How long a write over max_lag_s waits for the lag to fall before it is answered busy."""
    log_format: Literal["text", "json"] = "text"
    """Each log record is one line: "text" (`TIME LOGGER LEVEL MESSAGE`, control characters
    escaped) or "json" (one JSON object per line, for a log collector)."""
    freeze_unreachable: Literal["go", "stop"] = "go"
    """A sibling primary not confirmed armed within hold_s: "go" releases the held writes
    (change-recorded; the group is reported not consistent), "stop" refuses them until an
    operator acts, so nothing that depends on them can be written anywhere."""
    auth_failures_max: int = Field(default=10, ge=1, le=1_000_000)
    """Failed handshakes from one address within auth_failures_window_s before its
    connections are refused until the oldest ages out."""
    auth_failures_window_s: float = Field(default=60.0, gt=0, le=86400)
    planted_bugs: list[
        Literal[
            "mirror_late_write",
            "drop_update",
            "skip_changemap_bit",
            "early_sync_ack",
            "crash_background",
            "freeze_local_only",
            "freeze_late_sibling",
            "no_hold",
            "clear_bit_early",
            "failback_one_side",
            "resume_ignores_shadow",
            "siblings_different_t",
            "async_apply_past_c",
            "watermark_ahead",
            "replicator_ignores_failure",
            "seal_without_drain",
        ]
    ] = Field(default_factory=list)
    """TESTING ONLY: known bugs the fault campaigns must catch (docs/consistency.md)."""
    planted_bug_every: int = Field(default=50, ge=1, le=1_000_000)
    """A planted bug fires on every n-th eligible event."""
    identify_delay_s: float = Field(default=0.0, ge=0, le=60)
    """Testing aid: answer every identify this much later (a slow controller)."""
    volume_faults: dict[VolserText, str] = Field(default_factory=dict)
    """TESTING ONLY: {VOLSER = "eio_after:N" | "enospc_after:N"}: writes after the n-th fail."""

    commit_pause_dir: Path | None = None
    """TESTING ONLY: the pair-state writer stops before each commit while <dir>/paused exists
    (a FIFO it reports the commit into) until a line comes from the FIFO <dir>/release."""

    @field_validator("volume_faults")
    @classmethod
    def _volume_faults_armed(cls, faults: dict[str, str]) -> dict[str, str]:
        arm_volume_faults(faults)  # TESTING ONLY: checks every spec, arms the volumes opened next
        return faults

    # --- NBD export (docs/nbd.md) ---
    nbd_listen: Address | None = None
    """Serve every volume over NBD here (export name = volser); absent: no NBD port."""
    nbd_allow: list[Network] = Field(
        default_factory=lambda: [ipaddress.ip_network(n) for n in NBD_ALLOW_DEFAULT]
    )
    """Client addresses (CIDR) that may connect to nbd_listen; NBD has no authentication."""
    nbd_multi_conn: bool = True
    """Advertise NBD multi-conn (safe: flush is fdatasync of the one shared file)."""
    nbd_tls: Literal["auto", "require", "off"] = "auto"
    """"auto": as the controller's links: NBD clients must use TLS (STARTTLS, a client
    certificate of a [[hosts]] name) unless the config says plain_tcp = true; "require": TLS
    even with plain_tcp; "off": plain NBD, allowed only when nbd_listen is loopback."""

    # --- end NBD export ---
    # --- Before authentication (docs/security.md) ---
    unauthenticated_max: int = Field(default=64, ge=1, le=100_000)
    """Connections of one listener (native, NBD) that have not authenticated at once; the
    next is closed at accept."""
    unauthenticated_per_address_max: int = Field(default=16, ge=1, le=100_000)
    """The same, from one client address."""
    handshake_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """A connection that has not authenticated this long after accept is closed."""
    metrics_listen: Address | None = None
    """Serve Prometheus metrics at http://ADDRESS/metrics; absent: no metrics port."""


class TlsSection(_Strict):
    """The controller's certificates (relative paths are taken from the config's folder)."""

    ca: Path
    """The CA whose certificates clients must present (PEM)."""
    cert: Path
    """This controller's certificate (PEM), presented to clients."""
    key: Path
    """Its private key (PEM); must be 0600."""


class LssSection(_Strict):
    id: Lss
    ssid: Ssid


class VolumeSection(_Strict):
    lss: Lss
    cca: Cca
    volser: VolserText
    size: Size
    file: Path | None = None
    """Backing file; relative paths are under data_dir. Default: volumes/VOLSER.vol."""


class HostSection(_Strict):
    name: str = Field(min_length=1, max_length=64)
    secret: Secret
    """The host's secret: read from secret_file (0600) when the config names one."""
    secret_file: Path | None = None
    lss: list[Lss] | None = None
    """The LSSs this host may reach; absent means every device of the controller."""


class PeerSection(_Strict):
    name: str = Field(min_length=1, max_length=64)
    serial: Serial
    address: Address
    secret: Secret
    offer_lss: list[Lss] = Field(default_factory=list)
    """The LSSs whose SIMPLEX volumes this peer may establish pairs onto (become their
    primary); absent or empty: none. Pairs that exist are the peer's to act on either way."""
    secret_file: Path | None = None
    """The link's secret: read from secret_file (0600) when the config names one."""

    def offers(self, device: int) -> bool:
        return (device >> 8) in self.offer_lss


class ControllerConfig(_Strict):
    controller: ControllerSection
    tls: TlsSection | None = None
    plain_tcp: bool = False
    """No TLS on this controller's links: allowed only when every listen address is loopback."""
    lss: list[LssSection] = Field(min_length=1)
    volumes: list[VolumeSection] = Field(default_factory=list)
    hosts: list[HostSection] = Field(default_factory=list)
    peers: list[PeerSection] = Field(default_factory=list)

    def tls_files(self) -> TlsFiles | None:
        """The TLS files of this controller's links; None with plain_tcp."""
        if self.plain_tcp or self.tls is None:
            return None
        return TlsFiles(ca=self.tls.ca, cert=self.tls.cert, key=self.tls.key)

    def nbd_tls_required(self) -> bool:
        """Whether NBD clients must use TLS: plain NBD only where the config says so."""
        section = self.controller
        if section.nbd_listen is None or section.nbd_tls == "off":
            return False
        return section.nbd_tls == "require" or not self.plain_tcp

    def testing(self) -> dict[str, Any]:
        """The test-only switches this config sets, by key (empty in production)."""
        values = self.controller.model_dump(mode="json", include=set(TESTING_KEYS))
        return {key: values[key] for key in TESTING_KEYS if key in self.controller.model_fields_set}

    def ssid_of(self, lss: int) -> int:
        for entry in self.lss:
            if entry.id == lss:
                return entry.ssid
        raise KeyError(lss)

    def volume_path(self, volume: VolumeSection) -> Path:
        path = volume.file if volume.file is not None else Path("volumes") / f"{volume.volser}.vol"
        return path if path.is_absolute() else self.controller.data_dir / path


def is_loopback(host: str) -> bool:
    """Whether a listen host is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _tls_checks(config: ControllerConfig, source: str) -> list[str]:
    """TLS is required unless plain_tcp says otherwise, and plain TCP only on loopback; NBD
    clients must use TLS where nbd_tls requires it, so [tls] must be there too."""
    section = config.controller
    nbd = section.nbd_listen
    if section.nbd_tls == "off" and nbd is not None and not is_loopback(nbd[0]):
        return [
            f"{source}: controller.nbd_tls: off refused: nbd_listen {format_address(nbd)} is "
            'not a loopback address (plain NBD only on loopback; use nbd_tls = "auto" and [tls])'
        ]
    if not config.plain_tcp:
        if config.tls is None:
            return [
                f"{source}: tls: missing: every link is TLS (add [tls] with ca, cert and key, "
                "made with `remcopy pki`), or set plain_tcp = true on a loopback-only controller"
            ]
        return _tls_file_problems(config.tls, source)
    listens = [("controller.listen", section.listen)]
    if section.nbd_listen is not None:
        listens.append(("controller.nbd_listen", section.nbd_listen))
    problems = [
        f"{source}: plain_tcp: refused: {key} {format_address(address)} is not a loopback "
        "address (plain TCP only on loopback; use [tls] to listen elsewhere)"
        for key, address in listens
        if not is_loopback(address[0])
    ]
    if config.nbd_tls_required() and config.tls is None:
        problems.append(
            f"{source}: tls: missing: controller.nbd_tls is require, so NBD clients must use "
            "TLS: add a [tls] section with ca, cert and key (docs/security.md)"
        )
    elif config.tls is not None:
        problems += _tls_file_problems(config.tls, source)
    return problems


def _tls_file_problems(tls: TlsSection, source: str) -> list[str]:
    problems = [
        f"{source}: tls.{key}: cannot read {path}"
        for key, path in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key))
        if not path.is_file()
    ]
    if not problems and (problem := atrest.private_problem(tls.key, "TLS key")):
        problems.append(f"{source}: tls.key: {problem}")
    return problems


def _cross_checks(config: ControllerConfig, source: str) -> list[str]:
    """Rules that span entries; each problem names the key path and the value."""
    problems: list[str] = _tls_checks(config, source)
    track = config.controller.track_size
    if not (TRACK_SIZE_MIN_BYTES <= track <= TRACK_SIZE_MAX_BYTES) or track & (track - 1):
        problems.append(
            f"{source}: controller.track_size: must be a power of two from "
            f"{TRACK_SIZE_MIN_BYTES} to {TRACK_SIZE_MAX_BYTES} (got {track})"
        )
    lss_seen: dict[int, int] = {}
    for i, entry in enumerate(config.lss):
        if entry.id in lss_seen:
            problems.append(
                f"{source}: lss[{i}].id: duplicate LSS {entry.id:02X} "
                f"(also lss[{lss_seen[entry.id]}])"
            )
        lss_seen.setdefault(entry.id, i)
    cca_seen: dict[tuple[int, int], int] = {}
    volser_seen: dict[str, int] = {}
    file_seen: dict[Path, int] = {}
    for i, vol in enumerate(config.volumes):
        where = f"{source}: volumes[{i}]"
        if vol.lss not in lss_seen:
            problems.append(f"{where}.lss: LSS {vol.lss:02X} is not declared in [[lss]]")
        key = (vol.lss, vol.cca)
        if key in cca_seen:
            problems.append(
                f"{where}.cca: duplicate CCA {vol.cca:02X} in LSS {vol.lss:02X} "
                f"(also volumes[{cca_seen[key]}])"
            )
        cca_seen.setdefault(key, i)
        if vol.volser in volser_seen:
            problems.append(
                f"{where}.volser: duplicate volser {vol.volser!r} "
                f"(also volumes[{volser_seen[vol.volser]}])"
            )
        volser_seen.setdefault(vol.volser, i)
        if vol.size == 0 or vol.size % track:
            problems.append(
                f"{where}.size: must be a positive multiple of the track size "
                f"{track} (got {vol.size})"
            )
        path = config.volume_path(vol)
        if path in file_seen:
            problems.append(f"{where}.file: file {str(path)!r} is also volumes[{file_seen[path]}]")
        file_seen.setdefault(path, i)
    for i, peer in enumerate(config.peers):
        for lss in peer.offer_lss:
            if lss not in lss_seen:
                problems.append(
                    f"{source}: peers[{i}].offer_lss: LSS {lss:02X} is not declared in [[lss]]"
                )
    named: list[tuple[str, list[str]]] = [
        ("hosts", [h.name for h in config.hosts]),
        ("peers", [p.name for p in config.peers]),
    ]
    for section, entry_names in named:
        names: dict[str, int] = {}
        for i, name in enumerate(entry_names):
            if name in names:
                problems.append(
                    f"{source}: {section}[{i}].name: duplicate name {name!r} "
                    f"(also {section}[{names[name]}])"
                )
            names.setdefault(name, i)
    return problems


# What stands for a refused inline secret while the rest of the file is checked.
_REFUSED_SECRET: Final = "(refused: inline)"


def load_controller_config(
    path: Path, *, environ: Mapping[str, str] | None = None
) -> ControllerConfig:
    """Read and check a controller config; relative data_dir is taken from the file's folder.

    Test-only keys are refused unless `environ` (default: this process's) has
    REMCOPY_TESTING=1, and a file holding secrets is refused when group or others may access
    it; the refusals are listed with every other problem of the file."""
    data = configfile.read_toml(path)
    refused = _testing_refused(data, str(path), os.environ if environ is None else environ)
    refused += atrest.config_exposure(path, data)
    for entries in ("hosts", "peers"):
        refused += [
            f"{path}: {problem}"
            for problem in secretfiles.inline_problems(data.get(entries), entries)
            + secretfiles.resolve_files(data.get(entries), path.parent, entries)
        ]
    if refused:
        # Validate the rest without the refused keys: every problem is named at once, and a
        # refused volume_faults is never armed; a refused inline secret is not checked again.
        for entries in ("hosts", "peers"):
            for entry in data.get(entries) or ():
                if isinstance(entry, dict) and "secret" in entry and "secret_file" not in entry:
                    entry["secret"] = _REFUSED_SECRET
        rest = {k: v for k, v in data["controller"].items() if k not in TESTING_KEYS}
        try:
            configfile.validate(ControllerConfig, {**data, "controller": rest}, source=str(path))
        except ConfigError as exc:
            refused += exc.problems
        raise configfile.problems_error(str(path), refused)
    config = configfile.validate(ControllerConfig, data, source=str(path))
    data_dir = config.controller.data_dir
    if not data_dir.is_absolute():
        section = config.controller.model_copy(update={"data_dir": path.parent / data_dir})
        config = config.model_copy(update={"controller": section})
    if config.tls is not None:
        files = {
            name: file if file.is_absolute() else path.parent / file
            for name, file in config.tls.model_dump().items()
        }
        config = config.model_copy(update={"tls": TlsSection(**files)})
    problems = _cross_checks(config, str(path))
    if problems:
        raise configfile.problems_error(str(path), problems)
    return config
