"""The one redactor: what must never be printed, and text or URLs with it replaced by `***`.

Every message, summary, log line, run record, metadata file and job's metadata passes through
`redact_text`; `secrets_of` names what a URL and its storage options hold that is secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>:.,;)]")
_MIN_SECRET_LEN = 4  # shorter option values (true, 1, us) would blank out ordinary words


def redact_text(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """Free text with every URL in it redacted and every given secret replaced by `***`.

    The one redactor: messages, summaries, logs, run records, metadata and job metadata all
    pass through it (URL user:password and query values, storage option values).
    """
    if text is None:
        return None
    out = _URL.sub(lambda m: redact_url(m.group(0)), str(text))
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LEN:
            out = out.replace(secret, "***")
    return out


# Option values that say where, not who: an error naming the endpoint is far easier to act on.
NOT_SECRET_OPTIONS = frozenset(
    {"endpoint_url", "region_name", "signature_version", "addressing_style"}
)


def secrets_of(url: str, storage_options: dict) -> tuple[str, ...]:
    """What must never be printed: the URL's userinfo parts and every string option value."""
    found: list[str] = []
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    for part in (p for p in userinfo.split(":") if p):
        found += [part, unquote(part)]  # libraries quote it either way
    stack: list = [storage_options]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(v for k, v in value.items() if k not in NOT_SECRET_OPTIONS)
            if isinstance(value.get("endpoint_url"), str):  # its user:password, if any
                found += secrets_of(value["endpoint_url"], {})
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, str):
            found.append(value)
    return tuple(found)


def redact_url(url: str) -> str:
    """The URL with any user:password and query values replaced by `***`."""
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # plain or Windows path
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(_redacted_pair(kv) for kv in parts.query.split("&") if kv)
    fragment = "***" if parts.fragment else ""  # a fragment is never a path; it may be a token
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redacted_pair(pair: str) -> str:
    """`key=***`; a bare `?token` (no `=`) may itself be the secret: `***`."""
    key, sep, _ = pair.partition("=")
    return f"{key}=***" if sep else "***"


def storage_fix(error: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """A storage library's error as one line a user can act on, its secrets replaced."""
    text = f"{type(error).__name__}: {redact_text(str(error), secrets)}"
    if "credential" in text.lower():
        return (
            f"no credentials for this storage ({text}); set them (for S3: AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), or use a local file."
        )
    if "bucket name" in text.lower():
        return f"{text}. Put credentials in the environment or in storage options, not in the URL."
    return text
