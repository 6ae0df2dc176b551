"""Show URLs without the secrets users sometimes put in them (user:token@host, ?api-key=...), and strip those
secrets before a URL is stored.

The userinfo is everything between `scheme://` and the LAST `@` of the URL, not what `urlsplit` calls the netloc:
a password often holds `/`, `#`, `?` or `:` unencoded (AWS secret keys hold `/`), and `urlsplit` then ends the
netloc at that character — `http://user:pa/ss@host` has netloc `user:pa` and path `/ss@host`, and the whole URL
used to be printed. The rule over-redacts a URL whose path or query holds an `@` (`https://***@b.com` for
`https://host/x?mail=a@b.com`): a secret shown costs more than a host hidden.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://", re.I)
_URL_IN_TEXT = re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://\S+", re.I)  # a URL up to the next space
_SCP_USER_PASSWORD = re.compile(r"^[^/\s:@]+:\S*@")  # user:password@host:path (scp-like, with a secret)
_PIECE_MIN = 4  # shorter pieces of a secret are not worth hiding (and would hide common words)


def _userinfo_split(url: str) -> tuple[str, str | None, str]:
    """(`scheme://`, the userinfo or None, what follows it) of a URL; ("", None, url) when it has no scheme."""
    m = _SCHEME.match(url)
    if not m:
        return "", None, url
    rest = url[m.end() :]
    head, at, tail = rest.rpartition("@")
    return (m.group(0), head, tail) if at else (m.group(0), None, rest)


def redact_url(url: str) -> str:
    """`https://user:tok@host:8000/v1?key=x` -> `https://***@host:8000/v1?***`; paths and plain URLs unchanged.
    A URL that does not parse (a bad port, a broken IPv6 host) is redacted the same way: by pattern, never
    returned as it was."""
    url = str(url)
    scheme, userinfo, rest = _userinfo_split(url)
    if scheme:
        if "?" in rest:
            rest = rest.split("?", 1)[0] + "?***"
        return scheme + ("***@" if userinfo is not None else "") + rest
    if _SCP_USER_PASSWORD.match(url):
        return "***@" + url.rsplit("@", 1)[1]
    return url


def secret_parts(urls: Iterable[str]) -> list[str]:
    """What of `urls` must never appear in a message: each one's userinfo and query, whole, percent-decoded, and
    cut at `/`, `#`, `?`, `:` and `@` — a parser that misreads the URL (pyarrow, libgit2) quotes pieces of it, such
    as `K7MDENG…@bucket` as a path. Longest first, so a piece never leaves part of a longer one behind."""
    found: set[str] = set()
    for url in urls:
        url = str(url)
        scheme, userinfo, rest = _userinfo_split(url)
        if not scheme and _SCP_USER_PASSWORD.match(url):
            userinfo = url.rsplit("@", 1)[0]
        secrets = [userinfo] if userinfo else []
        if scheme and "?" in rest:
            secrets.append(rest.split("?", 1)[1])
        for secret in secrets:
            for form in {secret, unquote(secret)}:
                found.add(form)
                found.update(p for p in re.split(r"[/#?:@&=]", form) if len(p) >= _PIECE_MIN)
    return sorted((s for s in found if s), key=len, reverse=True)


def redact_text(text: object, *urls: str) -> str:
    """`text` (a message: ours, or a library's about `urls`) with every URL in it redacted and every secret part
    of `urls` replaced by `***`."""
    text = str(text)
    for part in secret_parts(urls):
        text = text.replace(part, "***")
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without its userinfo, user, password): what is stored is the first, the others are used once.
    Local paths and URLs without userinfo come back unchanged with (None, None). `user:password@` runs to the
    last `@` (a password may hold `/`, `#`, `?`); a bare `x@` (no `:`) must end the authority as RFC 3986 says,
    so `https://host/a@b.git` keeps its path."""
    scheme, userinfo, rest = _userinfo_split(url)
    if userinfo is None:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    if not colon or "/" in user:  # not `user:password`: only an RFC userinfo (no `/?#`) counts
        m = re.match(r"^([^/?#]*)@", url[len(scheme) :])
        if not m:
            return url, None, None
        userinfo = m.group(1)
        rest = url[len(scheme) + m.end() :]
        user, _, password = userinfo.partition(":")
    return scheme + rest, user or None, password or None


def library_message(e: BaseException, *urls: str, limit: int = 200) -> str:
    """A library's error about `urls` as one short line we can show: its first line, redacted (before it is cut,
    so a cut never leaves half a secret that no longer matches)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return redact_text(first, *urls)[:limit]
