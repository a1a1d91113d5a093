"""Weight URLs: which TOML strings are URLs, their printable and normal forms, joining.

Pure: no fsspec here, so reading a pipeline file stays cheap. `str(url)` is always redacted
(user:password and query values hidden); the raw URL is `url.url`, for fsspec only.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from pusa_batch.store.io import redact_url

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # 2+ letters: never a Windows drive
PROTOCOL_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}
FILE_ONLY_PROTOCOLS = ("http", "https")  # no folder listings: such a URL names one file


def is_url(text: str) -> bool:
    return bool(_SCHEME.match(text))


def protocol_of(text: str) -> str:
    """The canonical protocol of a URL (`s3a` is `s3`, `gcs` is `gs`), lower case."""
    found = _SCHEME.match(text)
    scheme = found.group(1).lower() if found else "file"
    return PROTOCOL_ALIASES.get(scheme, scheme)


def url_problem(text: str) -> str | None:
    """Why `text` cannot name weights, or None. `file://` must be followed by an absolute path."""
    parts = urlsplit(text)
    if protocol_of(text) == "file" and (parts.netloc not in ("", "localhost") or not parts.path):
        return "a file:// URL needs an absolute path (file:///shared/models/...)"
    if protocol_of(text) != "file" and not parts.netloc:
        return "the URL names no bucket or host"
    return None


@dataclass(frozen=True)
class WeightURL:
    """A weight file or folder named by URL (`s3://`, `gs://`, `https://`, `file:///`...)."""

    url: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/") if parts.path != "/" else parts.path
        object.__setattr__(self, "url", urlunsplit(parts._replace(path=path)))

    @property
    def protocol(self) -> str:
        return protocol_of(self.url)

    @property
    def name(self) -> str:
        return posixpath.basename(urlsplit(self.url).path)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> WeightURL:
        parts = urlsplit(self.url)
        return WeightURL(urlunsplit(parts._replace(path=posixpath.dirname(parts.path), query="")))

    @property
    def lists_folders(self) -> bool:
        """False for http(s): a folder there cannot be listed, so the URL names one file."""
        return self.protocol not in FILE_ONLY_PROTOCOLS

    def __truediv__(self, relative: str) -> WeightURL:
        parts = urlsplit(self.url)
        joined = posixpath.join(parts.path or "/", relative)
        return WeightURL(urlunsplit(parts._replace(path=joined, query="")))

    def normalised(self) -> str:
        """The cache key's form: canonical protocol, host in lower case, no user:password, query
        or fragment, no repeated or trailing slashes. Content is told apart by the ETag (or size
        and mtime) that goes into the key with it, never by the query."""
        parts = urlsplit(self.url)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        path = posixpath.normpath(re.sub("/+", "/", parts.path)) if parts.path else ""
        return f"{self.protocol}://{host}{path}".rstrip("/").removesuffix("/.")

    def __str__(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"WeightURL({str(self)!r})"
