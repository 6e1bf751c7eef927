# Reading TOML configuration files with errors a person can act on.
#
# Why: every config (controller, host, group) is TOML checked by a pydantic model with
# extra="forbid". This module turns pydantic's and tomllib's errors into one ConfigError that
# names the file, every bad key path and the value found, all of them at once, not only the
# first (an administrator fixes a file in one pass, not ten).
#
# Rules this module keeps:
# - Nothing here knows any particular config; models live next to their users.
# - Sizes and addresses are parsed by the small helpers below so every config spells them alike:
#   sizes as integers (bytes) or strings with a binary unit ("64MiB"), addresses "HOST:PORT".
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from remcopy.errors import ConfigError

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)

CONFIG_SIZE_MAX_BYTES = 64 * 1024 * 1024  # a group of 100,000 pairs in TOML is a few MiB

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]{1,20})\s*([a-zA-Z]{0,3})\s*$")
_PORT = re.compile(r"[0-9]{1,5}")  # ASCII only: str.isdigit() takes "٧٤٠١"


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as "64MiB"; raises ValueError naming the rule."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 65536 or '64MiB' (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must be >= 0 (got {value})")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match and match.group(2).lower() in _UNITS:
            return int(match.group(1)) * _UNITS[match.group(2).lower()]
    raise ValueError(f"expected a size such as 65536 or '64MiB' (got {value!r})")


def parse_address(value: object) -> tuple[str, int]:
    """(host, port) from "HOST:PORT"; raises ValueError naming the rule."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and host and _PORT.fullmatch(port) and int(port) <= 65535:
            return host.strip("[]"), int(port)
    raise ValueError(f"expected an address HOST:PORT such as 127.0.0.1:7401 (got {value!r})")


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(raw) > CONFIG_SIZE_MAX_BYTES:
        raise ConfigError(f"{path}: file is over {CONFIG_SIZE_MAX_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def validate(model: type[ModelT], data: dict[str, Any], *, source: str) -> ModelT:
    """Validate data against a model; every problem is named in one ConfigError."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            where = _key_path(tuple(err["loc"]))
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            elif err["type"] == "missing":
                message = "missing required key"
            elif message.startswith("Value error, "):
                message = message[len("Value error, ") :]
            value = err.get("input")
            # A validator's own message may already name what it got (and may hide a secret).
            named = err["type"] == "missing" or isinstance(value, dict) or "(got " in message
            shown = "" if named else f" (got {value!r})"
            problems.append(f"{source}: {where}: {message}{shown}")
        raise ConfigError(_summary(source, problems), problems) from None


def problems_error(source: str, problems: list[str]) -> ConfigError:
    return ConfigError(_summary(source, problems), problems)


def _summary(source: str, problems: list[str]) -> str:
    count = len(problems)
    head = f"{source}: {count} problem{'s' if count != 1 else ''}"
    return head + "".join(f"\n  {p}" for p in problems)


def load(model: type[ModelT], path: Path) -> ModelT:
    return validate(model, read_toml(path), source=str(path))
