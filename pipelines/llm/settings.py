"""The LLM endpoint from `.env` / the environment (the seed's names). The key is a SecretStr: its repr and str
are masked, and nothing here ever formats its value into a message."""

from __future__ import annotations

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hybrid.core.errors import HybridError
from hybrid.core.redact import redact_url, split_userinfo


class LLMSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True)

    OPENAI_API_KEY: SecretStr | None = None
    LLM_BASE_URL: str | None = None
    LLM_MODEL_NAME: str | None = None

    @field_validator("OPENAI_API_KEY", mode="before")
    @classmethod
    def _empty_key_is_none(cls, v):
        return None if v is None or (isinstance(v, str) and not v.strip()) else v

    @field_validator("OPENAI_API_KEY")
    @classmethod
    def _ascii_key(cls, v):
        """The key travels in an HTTP header, which carries printable ASCII only (httpx raised a UnicodeEncodeError
        mid-request). The message never quotes the key, nor the character: only where it is."""
        if v is None:
            return v
        key = v.get_secret_value()
        bad = next((i for i, c in enumerate(key) if not " " <= c <= "~"), None)
        if bad is not None:
            raise ValueError(
                f"holds a character that is not printable ASCII (at position {bad + 1} of "
                f"{len(key)}; an HTTP header carries ASCII only): retype or re-copy the key"
            )
        return v

    @field_validator("LLM_BASE_URL", "LLM_MODEL_NAME", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if v is None or (isinstance(v, str) and not v.strip()) else v.strip()

    @field_validator("LLM_BASE_URL")
    @classmethod
    def _a_url(cls, v):
        if v is None:
            return v
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0..65535
        except ValueError:
            parts = None
        if split_userinfo(v)[2] is not None and (parts is None or "@" not in parts.netloc):
            # `user:pa/ss@host`: urlsplit (and the HTTP client) end the host at the `/`, `#` or `?`
            raise ValueError("its password holds '/', '#' or '?': percent-encode them (%2F, %23, %3F)")
        if parts is None:
            raise ValueError("not a valid URL")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        return v

    @property
    def configured(self) -> bool:
        """An LLM is configured when there is a key (api.openai.com) or a base URL (a local server may need no key)."""
        return self.OPENAI_API_KEY is not None or self.LLM_BASE_URL is not None

    def model_name(self, default: str) -> str:
        return self.LLM_MODEL_NAME or default

    def api_key_value(self) -> str:
        # Local OpenAI-compatible servers (vLLM, Ollama, llama.cpp) accept any key; the client insists on one.
        return self.OPENAI_API_KEY.get_secret_value() if self.OPENAI_API_KEY is not None else "not-needed"

    def endpoint_text(self) -> str:
        return redact_url(self.LLM_BASE_URL) if self.LLM_BASE_URL else "https://api.openai.com/v1"


NO_LLM_MESSAGE = (
    "no LLM configured: set OPENAI_API_KEY (and LLM_BASE_URL for a local OpenAI-compatible server) "
    "in .env or the environment; see docs/llm.md"
)


def load_settings() -> LLMSettings:
    """The endpoint settings from `.env` / the environment; a bad value is one line naming the variable only
    (pydantic's message could carry the value, and the value may be the key)."""
    try:
        return LLMSettings()
    except Exception as e:
        first = e.errors()[0] if hasattr(e, "errors") else {}
        loc = ".".join(map(str, first.get("loc", ("?",))))
        why = ""
        if loc == "OPENAI_API_KEY" and first.get("type") == "value_error":  # our own words, never the value
            why = f" ({first.get('msg', '').removeprefix('Value error, ')})"
        if loc == "LLM_BASE_URL":  # not the secret: safe to say why, and to show the URL redacted
            import os

            msg = first.get("msg", "").removeprefix("Value error, ")
            why = (
                f" ({redact_url(os.environ.get('LLM_BASE_URL', ''))!s}: {msg}; expected like http://127.0.0.1:8000/v1)"
            )
        raise HybridError(f".env / environment: invalid value for {loc}{why}") from None
