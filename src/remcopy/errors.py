# Every error remcopy raises on purpose lives here, in one hierarchy under RemcopyError.
#
# Rules this module keeps:
# - A class is named for the condition (`DeviceNotFound`, `IllegalTransition`), and its
#   docstring says when it is raised; the docstring is the default message.
# - Messages follow `<context>: <what is wrong>: <key=value ...>` and are lowercase and terse,
#   with a hint when the fix is known. They are shown to people as they are.
# - Errors that cross the native protocol carry a numeric `code` (stable on the wire) and a
#   `retryable` flag, so a host can tell "try again" from "give up" without parsing text.
#   `error_from_wire` turns a code back into the same class on the receiving side.
# - Assertions are for our own bugs only; anything a user or a peer can cause is a typed error
#   below. What can only be our bug is `RemcopyInternalError`.
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from remcopy.pairenums import PairAction, PairState


class RemcopyError(Exception):
    """remcopy error"""

    code: ClassVar[int] = 1
    retryable: ClassVar[bool] = False
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str | None = None) -> None:
        text = message if message is not None else (self.__doc__ or type(self).__name__).strip()
        super().__init__(text)
        self.message = text

    def __str__(self) -> str:
        return self.message


class RemcopyInternalError(RemcopyError):
    """internal error: this should never happen; please report it"""

    code = 2


# Input errors: a person gave us something we cannot use (exit code 2).


class InputError(RemcopyError):
    """bad input"""

    code = 10
    exit_code = 2


@contextlib.contextmanager
def files_named_by_the_user(what: str) -> Iterator[None]:
    """A file or folder the user named cannot be made or read: one line naming it and why
    (exit 2), not a traceback."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise InputError(f"{what}: {where}{exc.strerror or exc}") from exc


class InvalidIdentifier(InputError):
    """an identifier (hardware address, device number, volser) is malformed"""

    code = 11
    # What kind of identifier was expected ("device number", "volser", ...) and the text that
    # arrived (possibly shortened). Class-level defaults keep `error_from_wire` working.
    kind: str | None = None
    text: str | None = None

    def __init__(
        self, message: str | None = None, *, kind: str | None = None, text: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.text = text


class ConfigError(InputError):
    """a configuration file is invalid; `problems` lists every bad key"""

    code = 12

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


# State errors: the request is well formed but the pair state forbids it.


class IllegalTransition(RemcopyError):
    """the pair state does not permit this action"""

    code = 20
    # The refused move: the pair's state, the action, the states that would have permitted it,
    # and the device as the caller named it. Class-level defaults keep `error_from_wire` working.
    state: PairState | None = None
    action: PairAction | None = None
    allowed: frozenset[PairState] = frozenset()
    device: str | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        state: PairState | None = None,
        action: PairAction | None = None,
        allowed: frozenset[PairState] = frozenset(),
        device: str | None = None,
    ) -> None:
        super().__init__(message)
        self.state = state
        self.action = action
        self.allowed = allowed
        self.device = device


class DeviceNotFound(RemcopyError):
    """the controller does not own that device"""

    code = 21


class DeviceNotAllowed(RemcopyError):
    """the host's definition does not name that device"""

    code = 22


class NotOffered(DeviceNotAllowed):
    """a peer controller named a device its [[peers]] entry does not offer it, or a pair it
    is not a member of"""

    code = 48


class OutOfRange(RemcopyError):
    """an I/O request reaches outside the volume"""

    code = 23


class WriteProtected(RemcopyError):
    """the device does not accept host writes in its current state"""

    code = 24


class DeviceBusy(RemcopyError):
    """the device is busy; retry the request"""

    code = 25
    retryable = True


class LateWrite(RemcopyError):
    """the write is stamped before a suspend time the controller has already sealed; retry"""

    code = 26
    retryable = True


class SuspendTimeInPast(RemcopyError):
    """the suspend time has already passed on the controller"""

    code = 27


class SuspendNotArmed(RemcopyError):
    """no suspend is armed on the device: there is nothing to cancel"""

    code = 29


class ConsistencyUnknown(RemcopyError):
    """the async group's consistency time cannot be agreed: a secondary controller of the
    group cannot be reached (recover --force goes on without it, not consistent)"""

    code = 30


class VolumeIOError(RemcopyError):
    """the volume's backing file failed a read or write"""

    code = 28


# Protocol errors: the bytes on a link broke the rules.


class ProtocolError(RemcopyError):
    """protocol error"""

    code = 40


class LocalProtocolError(ProtocolError):
    """we tried to send something the protocol does not allow (our bug)"""

    code = 41


class RemoteProtocolError(ProtocolError):
    """the peer sent something the protocol does not allow"""

    code = 42


class VersionMismatch(ProtocolError):
    """the two ends speak different protocol versions"""

    code = 43


class AuthenticationFailed(ProtocolError):
    """the peer could not prove it knows the shared secret"""

    code = 44


class UnknownRequest(ProtocolError):
    """the controller does not know that request type"""

    code = 45


# Resource errors: whose fault was it that a link or resource went away (trio's split).


class ResourceError(RemcopyError):
    """resource error"""

    code = 60


class ClosedResourceError(ResourceError):
    """the resource was closed by this side"""

    code = 61


class BrokenResourceError(ResourceError):
    """the link or the peer failed; the cause is attached"""

    code = 62
    retryable = True


class RequestTimeout(ResourceError):
    """the request got no answer in time"""

    code = 63
    retryable = True


class ShuttingDown(ResourceError):
    """the controller is shutting down and accepts no new work"""

    code = 64
    retryable = True


class TooManyConnections(ResourceError):
    """too many connections have not authenticated yet (per listener or per address)"""

    code = 66
    retryable = True


class EventsNotAsked(ResourceError):
    """some controllers could not be asked for their events"""

    code = 68


class ControllerFailed(RemcopyError):
    """the controller stopped: a background task (replication, a copy, a timer) failed"""

    code = 65
    exit_code = 1


def _all_subclasses(cls: type[RemcopyError]) -> list[type[RemcopyError]]:
    out: list[type[RemcopyError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[int, type[RemcopyError]] = {}
for _cls in _all_subclasses(RemcopyError):
    assert _cls.code not in _BY_CODE, f"duplicate error code {_cls.code}"
    _BY_CODE[_cls.code] = _cls


def error_from_wire(code: int, message: str) -> RemcopyError:
    """Rebuild the error a peer sent as an error frame; unknown codes become RemcopyError."""
    cls = _BY_CODE.get(code, RemcopyError)
    err = cls.__new__(cls)
    RemcopyError.__init__(err, message)
    if isinstance(err, ConfigError):
        err.problems = []
    return err
