"""Errors of the pagoPA connectors, classified once at the boundary.

``retriable`` tells the Prefect retry condition (and the connector's own short retry loop) whether trying
again later may help::

    PagopaError
    ├── PagopaRetriableError     timeout, connection refused or lost, HTTP 5xx and 429, truncated answer,
    │                            Node fault PPT_SYSTEM_ERROR
    └── PagopaFatalError
        ├── PagopaAuthError      HTTP 401/403, PPT_AUTENTICAZIONE, PPT_AUTORIZZAZIONE, unknown station
        ├── PagopaNotFoundError  HTTP 404, PPT_ID_FLUSSO_SCONOSCIUTO
        ├── PagopaSchemaError    an answer that does not match the official schema
        └── PagopaBusinessError  any other refusal (HTTP 4xx, a Node fault such as PPT_DOMINIO_SCONOSCIUTO)
"""

from __future__ import annotations


class PagopaError(Exception):
    """A call to pagoPA failed; the attributes say which call and how."""

    retriable = False

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.operation, self.status, self.code, self.retry_after = operation, status, code, retry_after
        self.reason = message
        super().__init__(f"{operation}: {message}")


class PagopaRetriableError(PagopaError):
    """A transient fault: trying again later may succeed."""

    retriable = True


class PagopaFatalError(PagopaError):
    """A fault that trying again will not fix."""


class PagopaAuthError(PagopaFatalError):
    """pagoPA refused our credentials or this EC/station."""


class PagopaNotFoundError(PagopaFatalError):
    """The resource asked for does not exist."""


class PagopaSchemaError(PagopaFatalError):
    """An answer that does not match the official schema."""


class PagopaBusinessError(PagopaFatalError):
    """pagoPA refused the request for a business reason."""
