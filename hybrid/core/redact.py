"""Show URLs without the secrets users sometimes put in them (user:token@host, ?api-key=...)."""

from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """`https://user:tok@host:8000/v1?key=x` -> `https://***@host:8000/v1?***`; paths and plain URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url  # a local path or something that is not a URL
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=netloc, query="***" if parts.query else "").geturl()
