"""Show URLs without the secrets users sometimes put in them (user:token@host, ?api-key=...), and strip those
secrets before a URL is stored."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_SCHEME_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)([^/?#]*)@", re.I)  # scheme://userinfo@...
_SCP_USER_PASSWORD = re.compile(r"^[^/\s:@]+:[^/\s@]*@")  # user:password@host:path (scp-like, with a secret)


def redact_url(url: str) -> str:
    """`https://user:tok@host:8000/v1?key=x` -> `https://***@host:8000/v1?***`; paths and plain URLs unchanged.
    A URL that does not parse (a bad port, a broken IPv6 host) is redacted by pattern, never returned as it was."""
    url = str(url)
    try:
        parts = urlsplit(url)
        parsed = bool(parts.scheme and parts.netloc)
    except ValueError:
        parsed = False
    if parsed:
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=netloc, query="***" if parts.query else ""))
    m = _SCHEME_USERINFO.match(url)
    if m:
        url = m.group(1) + "***@" + url[m.end():]
    elif _SCP_USER_PASSWORD.match(url):
        url = "***@" + url.split("@", 1)[1]
    if "://" in url and "?" in url:
        url = url.split("?", 1)[0] + "?***"
    return url


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without its userinfo, user, password): what is stored is the first, the others are used once.
    Local paths and URLs without userinfo come back unchanged with (None, None)."""
    m = _SCHEME_USERINFO.match(url)
    if not m:
        return url, None, None
    user, _, password = m.group(2).partition(":")
    return m.group(1) + url[m.end():], user or None, password or None
