"""The one exception tree of crest, shared by the client and the coordinator.

::

    CrestError
     ├── InvalidArgument      malformed or invalid request: shapes, dtypes, NaN/Inf,
     │                        out-of-range or duplicate indices, bad configuration
     ├── NotFound             unknown job or session
     ├── FailedPrecondition   valid request at the wrong time: out-of-order sequence,
     │                        wrong region, wrong phase
     ├── ResourceExhausted    message or job too large
     ├── Unauthenticated      missing or wrong token; a TLS certificate the client
     │                        does not trust
     ├── DataLoss             the store lost a job the coordinator knew (a Redis that
     │                        restarted without its data): create the job again
     ├── Unavailable          the coordinator or its selector cannot answer now
     │    └── NotOwner        another coordinator replica owns the job: ask it
     └── SelectionCrashed     selection hit a bug (coordinators in strict mode only)

Only :class:`Unavailable` (and a deadline) is worth retrying; every other error is permanent
for the same request.

Every handler maps an error through :data:`STATUS_OF` (a gRPC status name), and the client maps
statuses back through :func:`error_for_status`, so both sides raise the same classes.
"""

from __future__ import annotations

from typing import Any


class CrestError(Exception):
    """Base class of every error crest raises on purpose."""


class InvalidArgument(CrestError, ValueError):
    """The request is malformed or its values are invalid; nothing was changed."""


class NotFound(CrestError, KeyError):
    """The job or session does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FailedPrecondition(CrestError):
    """The request is valid but does not fit the job's current state; nothing was changed."""


class ResourceExhausted(CrestError):
    """The request is larger than the configured limits."""


class Unauthenticated(CrestError):
    """The request carries no valid token, or the client does not trust the server's TLS
    certificate."""


class DataLoss(CrestError):
    """The state store no longer holds a job the coordinator knew; its state is gone."""


class Unavailable(CrestError):
    """The coordinator or its selector cannot answer now; retrying later may succeed."""


class NotOwner(Unavailable):
    """Another coordinator replica owns the job (it holds the job's lease), or this one just
    lost it. ``owner`` is the owner's advertised ``host:port`` (empty when unknown); the
    server sends it as the :data:`OWNER_METADATA` trailing metadata of an UNAVAILABLE status,
    and the remote client goes there. Retryable: a dead owner's lease expires and another
    replica takes the job over."""

    def __init__(self, message: str, owner: str = "") -> None:
        super().__init__(message)
        self.owner = owner


# The trailing metadata key that carries :attr:`NotOwner.owner`.
OWNER_METADATA = "crest-owner"


class SelectionCrashed(CrestError):
    """Selection failed with an unexpected error (a bug); strict coordinators report it
    instead of falling back to random batches. Not retryable."""


# gRPC status code names (grpc.StatusCode[name]) of each error class.
STATUS_OF: dict[type[CrestError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    FailedPrecondition: "FAILED_PRECONDITION",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    Unauthenticated: "UNAUTHENTICATED",
    DataLoss: "DATA_LOSS",
    Unavailable: "UNAVAILABLE",
    SelectionCrashed: "INTERNAL",
}


def status_of(error: CrestError) -> str:
    """The gRPC status name for an error (``INTERNAL`` for the bare base class)."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return "INTERNAL"


def error_for_status(status: str, message: str) -> CrestError:
    """The error a client raises for a gRPC status name and its details."""
    for cls, name in STATUS_OF.items():
        if name == status:
            return cls(message)
    return CrestError(f"{status}: {message}")


def invalid_fields(what: str, error: Any) -> InvalidArgument:
    """An :class:`InvalidArgument` listing each field at fault, from a pydantic
    ``ValidationError`` (duck-typed: anything with ``errors()``).

    Example: ``invalid job config: tau: must be >= 0 (got -1); bogus: unknown field``. Input
    values are shown only when short, so a hostile value never swells the message.
    """
    parts = []
    for item in error.errors():
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, InvalidArgument):  # raised by a nested crest model: already told
            parts.append(str(cause).removeprefix(f"invalid {what}: "))
            continue
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif len(shown := repr(item.get("input"))) <= 40 and item["loc"]:
            message += f" (got {shown})"
        field = ".".join(str(part) for part in item["loc"])
        parts.append(f"{field}: {message}" if field else message)
    return InvalidArgument(f"invalid {what}: " + "; ".join(parts))
