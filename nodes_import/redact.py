"""Secrets out of what is shown: the password and the query string of a URI.

A pre-signed URL (S3, GCS) carries its signature, credential and session token in the
query string, and whoever holds the URL holds the access: a URI is redacted before it is
logged, stored in ``job_status.source`` or put in an error message.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# What replaces a redacted part.
MASK = "***"


def redact_uri(uri: str) -> str:
    """``uri`` as it may be shown: the user part of the authority and the whole query
    string masked; the scheme, host and path kept. A local path comes back unchanged."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<a URI that cannot be parsed>"
    if len(parts.scheme) <= 1 or parts.scheme == "file":  # a path (or a Windows drive)
        return uri
    if not parts.query and "@" not in parts.netloc:
        return uri.split("#", 1)[0]  # as given (urlunsplit would rewrite "x:///" as "x:/")
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, MASK if parts.query else "", ""))
