"""How long MLflow's HTTP client may keep trying a tracking server, and what to say when it gave up.

MLflow's HTTP client retries a server that does not answer MLFLOW_HTTP_REQUEST_MAX_RETRIES times (default 7) with
exponential back-off (factor 2): a dead server took 249 s to fail a `models:/` URI, each try bounded only by
MLFLOW_HTTP_REQUEST_TIMEOUT (default 120 s). The CLI sets these bounds where the user has not: a refused
connection fails in about 3 s, a host that drops packets in 3 tries x 8 s + about 3 s of back-off, under 30 s. A
slow or restarting server needs them raised, and the failure message says so (`unreachable_hint`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}
_UNREACHABLE_TEXT = ("Max retries exceeded", "Failed to establish a new connection", "Connection refused",
                     "Read timed out", "Connect timeout", "Name or service not known", "Connection aborted")


def bound_http_retries(environ=os.environ) -> dict[str, str]:
    """Set MLflow's HTTP retry bounds (`HTTP_BOUNDS`) where `environ` does not set them already; returns those set.
    A user's own value always wins: raising them is how a slow server is reached."""
    added = {k: v for k, v in HTTP_BOUNDS.items() if not environ.get(k)}
    environ.update(added)
    return added


@contextlib.contextmanager
def http_retry_bounds() -> Iterator[dict[str, str]]:
    """`bound_http_retries` for the duration of a block (one command), then the environment as it was: a caller
    running commands in its own process (a test, a notebook) keeps MLflow's defaults outside them."""
    added = bound_http_retries()
    try:
        yield added
    finally:
        for key, value in added.items():
            if os.environ.get(key) == value:
                del os.environ[key]


def unreachable_hint(exc: BaseException) -> str:
    """When `exc` (or what it wraps) says the server could not be reached: a sentence naming the retry settings in
    force and which to raise; else "". MLflow reports a dead server as an MlflowException whose message holds
    requests' ConnectionError text, chained to it."""
    seen, chain = set(), exc
    unreachable = False
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        module = type(chain).__module__
        if (isinstance(chain, (ConnectionError, TimeoutError)) or
                (module.startswith(("requests", "urllib3")) and "Error" in type(chain).__name__
                 and any(t in str(chain) for t in _UNREACHABLE_TEXT))):
            unreachable = True
            break
        chain = chain.__cause__ or chain.__context__
    if not unreachable:
        text = getattr(exc, "message", None) or str(exc)
        unreachable = any(t in text for t in _UNREACHABLE_TEXT)
    if not unreachable:
        return ""
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7 (MLflow's default)")
    timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120 (MLflow's default)")
    return (f"; the server did not answer with MLFLOW_HTTP_REQUEST_MAX_RETRIES={retries} and "
            f"MLFLOW_HTTP_REQUEST_TIMEOUT={timeout} s per try: check that it runs at this URI, or raise these "
            f"settings for a slow or restarting server")


__all__ = ["HTTP_BOUNDS", "bound_http_retries", "http_retry_bounds", "unreachable_hint"]
