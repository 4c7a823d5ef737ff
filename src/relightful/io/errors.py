"""The one exception type for bad input (it always names the file and the reason), and `redact`, which every
message that may carry a URI goes through so that no credential reaches a terminal, a log or a CI record."""

from __future__ import annotations

import os
import re
from pathlib import Path

MASK = "***"

# `scheme://user:password@host` or `scheme://token@host`: the whole user-info part is a credential (MLflow and S3
# URIs carry keys there; a lone "user" is often a token).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"<>]+)@")
# Query parameters that carry a secret: tokens, passwords, API keys, and the parts of S3/GCS/Azure presigned URLs
# that sign or identify the key (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, AWSAccessKeyId, sig).
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_.-]*(?:token|password|passwd|pwd|secret|api[_-]?key|apikey|access[_-]?key|"
    r"signature|credential|auth)[A-Za-z0-9_.-]*|sig|key|AWSAccessKeyId)=)(?P<value>[^&;#\s'\"<>]+)",
    re.IGNORECASE)
# An Authorization header echoed in an HTTP error.
_AUTH_HEADER = re.compile(r"\b(?P<kind>Bearer|Basic|Token)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")
# Environment variables whose values are secrets: wherever such a value shows up verbatim, it is masked too.
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_ACCESS_KEY_ID", "DATABRICKS_TOKEN", "MLFLOW_TRACKING_CLIENT_CERT_PATH")


def redact(text: object) -> str:
    """`text` with every credential masked: URL user-info (`http://***@host`), secret query parameters
    (`?token=***`, presigned S3 signatures), Authorization values, and the values of the secret environment
    variables in `SECRET_ENV`. Idempotent; the rest of the text (host, port, path) is kept, so a message still says
    where it failed."""
    out = str(text)
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", out)
    out = _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", out)
    out = _AUTH_HEADER.sub(lambda m: f"{m['kind']} {MASK}", out)
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:  # a one-letter "secret" would mask half the message
            out = out.replace(value, MASK)
    return out


class InputError(ValueError):
    """An input file (or folder, URI or option) that cannot be used, with the reason why. Both parts are redacted:
    the "file" may be a tracking URI with a password in it."""

    def __init__(self, path: str | Path, reason: str):
        self.path = redact(path)
        self.reason = redact(reason)
        super().__init__(f"{self.path}: {self.reason}")
