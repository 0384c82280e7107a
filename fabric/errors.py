"""The error tree. Celery retries :class:`TransientError` only; everything else fails at once.

``AppError`` -> ``TransientError`` (a backend down, a timeout: try again later)
            -> ``PermanentError`` (bad input, not found, misconfiguration: trying again cannot help)
"""

from __future__ import annotations


class AppError(Exception):
    """Base of every error this project raises on purpose."""


class TransientError(AppError):
    """A failure that may pass: the operation can be retried with backoff."""


class BackendUnavailable(TransientError):
    """A backend (Redis, MinIO, Elasticsearch, Weaviate, OpenAI ...) did not answer or answered 5xx/429."""


class PermanentError(AppError):
    """A failure that retrying cannot fix. Tasks raising it are dead-lettered at once."""


class InvalidInput(PermanentError, ValueError):
    """Input that does not meet the contract. The message names what is wrong and where."""


class NotFound(PermanentError, LookupError):
    """The requested object, document or message does not exist."""


class ConfigurationError(PermanentError):
    """The system is configured in a way that cannot work; the message says which setting to change."""
