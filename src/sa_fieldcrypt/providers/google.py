"""What every Google Cloud call of the providers shares: deadlines, retries, status names.

Needs the ``gcp`` extra (``google-api-core``). The Secret Manager provider
(:mod:`~sa_fieldcrypt.providers.gcp`) and the Cloud KMS key wrapper
(:mod:`~sa_fieldcrypt.providers.kms`) both call through it, so both retry the same failures
within one time budget per operation and name failures the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

try:
    from google.api_core import exceptions as api_exceptions
    from google.api_core import retry as api_retry
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "the Google Cloud key providers need the gcp extra: pip install 'sa-fieldcrypt[gcp]'"
    ) from exc

__all__ = ["NO_CREDENTIALS_HELP", "BudgetSpent", "Deadline", "common_hint", "status_name"]

#: What to do when no Google credentials are found.
NO_CREDENTIALS_HELP = (
    "no Google credentials were found: run `gcloud auth application-default login`, or run "
    "with a service account (GOOGLE_APPLICATION_CREDENTIALS, or the metadata server)"
)

# Transient failures worth another attempt inside the operation's deadline. Writes are never
# retried: a retried AddSecretVersion could add the same key twice.
_TRANSIENT = api_retry.if_exception_type(
    api_exceptions.ServiceUnavailable, api_exceptions.ResourceExhausted
)


class BudgetSpent(api_exceptions.DeadlineExceeded):
    """An operation's time budget ran out before one of its calls could be made.

    Raised by :class:`Deadline`, not by a service: the calls before it took the time.
    """


class Deadline:
    """One time budget shared by every call of one operation.

    Args:
        seconds: how long the whole operation may take, retries included.
    """

    def __init__(self, seconds: float):
        self._end = time.monotonic() + seconds

    def read(self) -> dict[str, Any]:
        """Explicit timeout and retry for an idempotent call, within what is left."""
        left = self.left()
        retry = api_retry.Retry(
            predicate=_TRANSIENT, initial=0.1, maximum=1.0, multiplier=2.0, timeout=left
        )
        return {"timeout": self._per_attempt, "retry": retry}

    def write(self) -> dict[str, Any]:
        """Explicit timeout and no retry, for a call that must not run twice."""
        return {"timeout": self._per_attempt, "retry": None}

    def left(self) -> float:
        """Seconds left; raises :class:`BudgetSpent` when none are."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise BudgetSpent(  # type: ignore[no-untyped-call]
                "the time allowed for the operation ran out"
            )
        return left

    def _per_attempt(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # A timeout decorator, as google-api-core applies one to each attempt: every attempt
        # of a retried call gets what is left of this budget. (A number would be made a
        # TimeToDeadlineTimeout, which hands a late attempt its whole initial timeout again.)
        def attempt(*args: Any, **kwargs: Any) -> Any:
            kwargs["timeout"] = self.left()
            return func(*args, **kwargs)

        return attempt


def status_name(exc: Exception) -> str:
    """The gRPC status name of a failed call (``"PERMISSION_DENIED"``), or its type's name.

    A retry budget that ran out names the status of its last attempt.
    """
    if isinstance(exc, api_exceptions.RetryError):
        cause = exc.cause
        if isinstance(cause, api_exceptions.GoogleAPICallError):
            exc = cause
        else:
            return "DEADLINE_EXCEEDED"
    status = getattr(exc, "grpc_status_code", None)
    if status is not None:
        return str(status.name)
    return type(exc).__name__


def common_hint(
    code: str, service: str, timeout: float, exc: BaseException | None = None
) -> str | None:
    """The fix for a status any Google Cloud API may answer ``code`` with, or None.

    Args:
        code: the gRPC status name (``"UNAVAILABLE"``).
        service: how the message names the service (``"Cloud KMS"``).
        timeout: the operation's time limit, in seconds.
        exc: the failure; a :class:`BudgetSpent` is not the service's doing, and is named so.
    """
    if isinstance(exc, BudgetSpent) or (
        isinstance(exc, api_exceptions.RetryError) and isinstance(exc.cause, BudgetSpent)
    ):
        return (
            f"the {timeout:g} s the whole operation may take (FIELDCRYPT_GCP_TIMEOUT) ran out "
            f"before {service} was called: the calls before it (to Secret Manager or Cloud "
            "KMS) took them"
        )
    hints = {
        "UNAUTHENTICATED": "the credentials were refused: check the application default "
        "credentials",
        "UNAVAILABLE": f"{service} could not be reached: check the network path to it",
        "DEADLINE_EXCEEDED": f"{service} did not answer within the {timeout:g} s the whole "
        "operation may take (FIELDCRYPT_GCP_TIMEOUT)",
        "RESOURCE_EXHAUSTED": f"the project's {service} quota is used up: refresh less often "
        "(FIELDCRYPT_GCP_CACHE_TTL) or raise the quota",
    }
    return hints.get(code)
