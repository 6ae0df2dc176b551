"""Secrets and personal data replaced by typed placeholders before any text is written or sent to the LLM.

The structural stages (pipelines/steps.py, pipelines/fim.py) pass every text they write through a `Scrubber`:
declaration code (ast.jsonl, diff_ast.jsonl), the commit message and unified diff (commit_data.json, the
`commit_metadata` of every record) and the FIM prefix / middle / suffix. Every later stage (the LLM prompts, the
export) reads those files, so it only ever sees scrubbed text. `pipeline.scrub_secrets: false` turns it off.

Placeholders: `<SECRET:kind>` for a secret, `<EMAIL>` for an e-mail address; a password in a URL keeps the URL
around it (`https://user:<SECRET:url_password>@host/`). The kinds are the values of `KINDS` (and `email`).

Detection: the regex plugins of Yelp's detect-secrets (the set BigCode used to redact The Stack / StarCoder, plus
its keyword plugin for `password = "..."`), called on lines directly (its file scanner is file-based and slow),
with its false-positive filters for keyword and entropy hits (`${VAR}`, `<templated>`, `f(x)` references, ids,
UUIDs, sequences). What it lacks is added here: whole private-key blocks (its plugin only finds the BEGIN line),
e-mail addresses, and passwords in URLs (the URL userinfo rule of hybrid/core/redact.py). Its hex-entropy plugin
is not used: git hashes and checksums are hex, common in code and no secrets (a hex secret next to a keyword is
still found by the keyword plugin).

Speed: one combined regex (`_GATE`: the plugins' own patterns and keywords, `@`, `://`, `PRIVATE KEY`, quoted
base64-like runs) is searched over the whole text; only the lines it hits are run through the plugins, and
results are cached by text (a declaration keeps its code over many commits).

Offsets: every replacement stays on its line (a private-key block keeps its line breaks), so line numbers
(`start_line`, `end_line`, `middle_start_line`, …) stay true; byte offsets (`start_byte`, `end_byte`) refer to
the original file, whose length a placeholder changes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from hybrid.core.redact import split_userinfo

EMAIL_PLACEHOLDER = "<EMAIL>"
PLACEHOLDER_RE = re.compile(r"<SECRET:[a-z0-9_]+>|<EMAIL>")

# detect-secrets plugin class name -> the kind in the placeholder and the counts
KINDS = {
    "AWSKeyDetector": "aws_key",
    "ArtifactoryDetector": "artifactory_token",
    "AzureStorageKeyDetector": "azure_storage_key",
    "CloudantDetector": "cloudant_credentials",
    "DiscordBotTokenDetector": "discord_token",
    "GitHubTokenDetector": "github_token",
    "GitLabTokenDetector": "gitlab_token",
    "IbmCloudIamDetector": "ibm_cloud_key",
    "IbmCosHmacDetector": "ibm_cos_key",
    "JwtTokenDetector": "jwt",
    "MailchimpDetector": "mailchimp_key",
    "NpmDetector": "npm_token",
    "OpenAIDetector": "openai_key",
    "PypiTokenDetector": "pypi_token",
    "SendGridDetector": "sendgrid_key",
    "SlackDetector": "slack_token",
    "SoftlayerDetector": "softlayer_key",
    "SquareOAuthDetector": "square_oauth",
    "StripeDetector": "stripe_key",
    "TelegramBotTokenDetector": "telegram_token",
    "TwilioKeyDetector": "twilio_key",
    "KeywordDetector": "keyword_secret",  # password = "...", api_key: "...", …
    "Base64HighEntropyString": "high_entropy",  # a quoted string of entropy > 4.5 bits per character
}
OWN_KINDS = ("private_key", "url_password", "email")

_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY((?: BLOCK)?)-----.*?(?:-----END \1PRIVATE KEY\2-----|\Z)", re.S
)
_PUTTY_KEY = re.compile(r"PuTTY-User-Key-File-\d:.*?(?:Private-MAC: *\S*|\Z)", re.S)
# An address: a local part, `@`, at least one dotted label and a top-level domain of letters. `git@host:` (an SSH
# remote) is no person's address.
_EMAIL = re.compile(r"(?<![\w.%+-])(?!git@)[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_HEX = re.compile(r"[0-9a-fA-F]+")
_URL = re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s\"'`<>]+", re.I)
_KEYWORDS = (
    r"api_?key|auth_?key|service_?key|account_?key|db_?key|database_?key|priv_?key|private_?key|client_?key|"
    r"db_?pass|database_?pass|key_?pass|password|passwd|pwd|secret|contrase(?:ñ|n)a"
)  # detect-secrets' KeywordDetector.DENYLIST


def _plugins() -> list[Any]:
    from detect_secrets.plugins import (
        artifactory,
        aws,
        azure_storage_key,
        cloudant,
        discord,
        github_token,
        gitlab_token,
        high_entropy_strings,
        ibm_cloud_iam,
        ibm_cos_hmac,
        jwt,
        keyword,
        mailchimp,
        npm,
        openai,
        pypi_token,
        sendgrid,
        slack,
        softlayer,
        square_oauth,
        stripe,
        telegram_token,
        twilio,
    )

    regex_plugins = [
        aws.AWSKeyDetector,
        artifactory.ArtifactoryDetector,
        azure_storage_key.AzureStorageKeyDetector,
        cloudant.CloudantDetector,
        discord.DiscordBotTokenDetector,
        github_token.GitHubTokenDetector,
        gitlab_token.GitLabTokenDetector,
        ibm_cloud_iam.IbmCloudIamDetector,
        ibm_cos_hmac.IbmCosHmacDetector,
        jwt.JwtTokenDetector,
        mailchimp.MailchimpDetector,
        npm.NpmDetector,
        openai.OpenAIDetector,
        pypi_token.PypiTokenDetector,
        sendgrid.SendGridDetector,
        slack.SlackDetector,
        softlayer.SoftlayerDetector,
        square_oauth.SquareOAuthDetector,
        stripe.StripeDetector,
        telegram_token.TelegramBotTokenDetector,
        twilio.TwilioKeyDetector,
    ]
    return [p() for p in regex_plugins] + [keyword.KeywordDetector(), high_entropy_strings.Base64HighEntropyString()]


# When a plugin can match a line at all: a literal of its pattern in the line (case-sensitive), or in the line
# lower-cased (the keyword plugins). The patterns are detect-secrets'. A token plugin's secret is also a run of 20
# or more token characters (`_TOKEN_RUN`): a line without one is not shown to the token plugins at all.
# KeywordDetector's DENYLIST words, spelled out (`pass` alone would send every Python `pass` to it)
_KEYWORD_WORDS = tuple(
    f"{w}{sep}{k}"
    for w, k in [
        ("api", "key"),
        ("auth", "key"),
        ("service", "key"),
        ("account", "key"),
        ("db", "key"),
        ("database", "key"),
        ("priv", "key"),
        ("private", "key"),
        ("client", "key"),
        ("db", "pass"),
        ("database", "pass"),
        ("key", "pass"),
    ]
    for sep in ("", "_")
) + ("password", "passwd", "pwd", "secret", "contrase")
_ANCHORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "AWSKeyDetector": (("A3T", "ABIA", "ACCA", "AKIA", "ASIA"), ("aws",)),  # (its secret-key pattern: 40 chars)
    "ArtifactoryDetector": (("AKC", *(f"AP{c}" for c in "0123456789ABCDEF")), ()),
    "AzureStorageKeyDetector": (("AccountKey=",), ()),
    "CloudantDetector": ((), ("cloudant", "cl_", "cl-", "clkey", "clpw", "clpass", "cltoken", "clapi", "clou")),
    "DiscordBotTokenDetector": ((".",), ()),
    "GitHubTokenDetector": (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), ()),
    "GitLabTokenDetector": (
        (
            "glpat-",
            "gldt-",
            "glft-",
            "glsoat-",
            "glrt-",
            "glcbt-",
            "glimt-",
            "glptt-",
            "glagent-",
            "gloas-",
            "GR1348941",
        ),
        (),
    ),
    "IbmCloudIamDetector": ((), ("key", "pwd", "pass", "token")),
    "IbmCosHmacDetector": ((), ("secret",)),
    "JwtTokenDetector": (("eyJ",), ()),
    "MailchimpDetector": (("-us",), ()),
    "NpmDetector": (("_authToken",), ()),
    "OpenAIDetector": (("T3BlbkFJ",), ()),
    "PypiTokenDetector": (("pypi-",), ()),
    "SendGridDetector": (("SG.",), ()),
    "SlackDetector": ((), ("xox", "hooks.slack.com")),
    "SoftlayerDetector": ((), ("softlayer", "sl_", "sl-", "slkey", "slapi", "slpass", "slpw", "sltoken")),
    "SquareOAuthDetector": (("sq0csp-",), ()),
    "StripeDetector": (("k_live_",), ()),
    "TelegramBotTokenDetector": ((":",), ()),
    "TwilioKeyDetector": (("AC", "SK"), ()),
    "KeywordDetector": ((), _KEYWORD_WORDS),
    "Base64HighEntropyString": (('"', "'"), ()),
}
# The shortest line each plugin can find something in (its pattern's shortest match, quotes and keyword included)
_MIN_LINE = {
    "AWSKeyDetector": 20,
    "ArtifactoryDetector": 11,
    "AzureStorageKeyDetector": 99,
    "CloudantDetector": 30,
    "DiscordBotTokenDetector": 59,
    "GitHubTokenDetector": 40,
    "GitLabTokenDetector": 25,
    "IbmCloudIamDetector": 47,
    "IbmCosHmacDetector": 58,
    "JwtTokenDetector": 20,
    "MailchimpDetector": 35,
    "NpmDetector": 20,
    "OpenAIDetector": 51,
    "PypiTokenDetector": 89,
    "SendGridDetector": 69,
    "SlackDetector": 9,
    "SoftlayerDetector": 64,
    "SquareOAuthDetector": 50,
    "StripeDetector": 32,
    "TelegramBotTokenDetector": 44,
    "TwilioKeyDetector": 34,
    "KeywordDetector": 6,
    "Base64HighEntropyString": 22,
}
# The plugins whose secret can be shorter than 20 characters: they run on lines without a long token too (the
# keyword plugins of IBM, Cloudant and Softlayer want 24 to 64 characters, AWS's secret key 40)
_SHORT_PLUGINS = frozenset(("SlackDetector", "KeywordDetector"))
# A run of 20 or more token characters, found without a regex (sre tries a character class at every position:
# 4 us a line, where translating the line's bytes and looking for 20 `a`s takes 0.5): every token character
# becomes `a`, anything else a space.
_TOKEN_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+/=-")
_TOKEN_TABLE = bytes(ord("a") if i in _TOKEN_CHARS else ord(" ") for i in range(256))
_TOKEN_RUN = b"a" * 20


class Scrubber:
    """Replaces secrets and e-mail addresses by placeholders; one per process (see `scrubber()`)."""

    def __init__(self, max_cached: int = 20_000, max_lines: int = 500_000) -> None:
        from detect_secrets.filters import heuristic
        from detect_secrets.plugins.keyword import QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP

        self.plugins = {type(p).__name__: p for p in _plugins()}
        self.short_plugins = [(n, p) for n, p in self.plugins.items() if n in _SHORT_PLUGINS]
        self._heuristic = heuristic
        self._keyword_regexes = QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP
        self.max_cached, self.max_lines = max_cached, max_lines
        self._cache: dict[str, tuple[str, Counter]] = {}
        # Lines known to hold nothing, and lines scrubbed (with their replacements). Lines come back far more
        # often than texts do: a file's next version, a declaration's next edit, the diff and the FIM sample that
        # show them repeat most of their lines, and each distinct line is looked at once.
        self._clean: set[str] = set()
        self._hits: dict[str, tuple[str, Counter]] = {}

    # -- the public calls -------------------------------------------------------------------------------
    def scrub(self, text: str) -> tuple[str, Counter]:
        """(`text` with every secret and address replaced, {kind: replacements}); cached by text (the counts
        are the cache's own: read them, do not change them)."""
        hit = self._cache.get(text)
        if hit is None:
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            lines, counts = self.scrub_lines(text)
            total: Counter = Counter()
            for c in counts.values():
                total.update(c)
            hit = self._cache[text] = ("".join(lines) if total else text, total)
        return hit

    def scrub_lines(self, text: str) -> tuple[list[str], dict[int, Counter]]:
        """`text` split after each '\\n', scrubbed, and the replacements made, by line index (only lines with
        one; a private-key block counts on its first line). The line breaks stay where they were."""
        counts: dict[int, Counter] = {}
        if "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text:
            text = self._private_keys(text, counts)
        lines = text.split("\n")
        lines = [ln + "\n" for ln in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        clean, hits = self._clean, self._hits
        if len(clean) > self.max_lines:
            clean.clear()
        for i in [i for i, line in enumerate(lines) if line not in clean]:
            # a line is looked up without its indentation and diff marker: the same code line comes back
            # indented otherwise (a declaration's body in a nested one) and as `+`, `-` and ` ` lines of diffs
            line = lines[i]
            key = line.lstrip(" \t+-")
            hit = hits.get(key)
            if hit is None:
                if key in clean:
                    continue
                hit = self._line(key)
                if hit is None:
                    clean.add(key)
                    clean.add(line)
                    continue
                hits[key] = hit
            lines[i] = line[: len(line) - len(key)] + hit[0]
            counts.setdefault(i, Counter()).update(hit[1])
        return lines, counts

    # -- the parts ---------------------------------------------------------------------------------------
    def _private_keys(self, text: str, counts: dict[int, Counter]) -> str:
        def replace(m: re.Match) -> str:
            counts.setdefault(text.count("\n", 0, m.start()), Counter())["private_key"] += 1
            # the block's line breaks stay (line numbers hold); in a diff, so does each line's +/-/space marker
            body = m.group(0).split("\n")[1:]
            marker = body[0][:1] if body and body[0][:1] in ("+", "-", " ") else ""
            if any(ln[:1] != marker for ln in body):
                marker = ""
            return "<SECRET:private_key>" + ("\n" + marker) * len(body)

        text = _PRIVATE_KEY_BLOCK.sub(replace, text)
        return _PUTTY_KEY.sub(replace, text)

    def _line(self, line: str) -> tuple[str, Counter] | None:
        """One line scrubbed, or None when there was nothing to replace."""
        has_at = "@" in line
        low = line.lower()
        # (str methods only: a line costs about 1 us here, and 9 in 10 lines of code end here)
        short = (
            "key" in low or "pass" in low or "pwd" in low or "secret" in low or "contrase" in low or "xox" in low
        ) or "hooks.slack" in low
        token = len(line) >= 20 and _TOKEN_RUN in line.encode("utf-8", "replace").translate(_TOKEN_TABLE)
        if not (has_at or short or token):
            return None
        counts: Counter = Counter()
        if has_at and "://" in line:
            line = self._url_passwords(line, counts)
        found: dict[str, str] = {}  # secret value -> kind
        n = len(line)
        for name, plugin in self.plugins.items() if token else self.short_plugins:
            if n < _MIN_LINE[name]:
                continue
            anchors, lower_anchors = _ANCHORS[name]
            if any(a in line for a in anchors) or any(a in low for a in lower_anchors):
                for value in self._plugin_hits(plugin, name, line):
                    found.setdefault(value, KINDS[name])
        for value in sorted(found, key=len, reverse=True):
            n = line.count(value)
            if n:
                line = line.replace(value, f"<SECRET:{found[value]}>")
                counts[found[value]] += n
        if has_at:
            line, n = _EMAIL.subn(EMAIL_PLACEHOLDER, line)
            if n:
                counts["email"] += n
        return (line, counts) if counts else None

    def _url_passwords(self, line: str, counts: Counter) -> str:
        def replace(m: re.Match) -> str:
            url = m.group(0)
            stripped, user, password = split_userinfo(url)
            if not password or PLACEHOLDER_RE.fullmatch(password):
                return url
            counts["url_password"] += 1
            scheme_end = url.index("://") + 3
            return f"{url[:scheme_end]}{user or ''}:<SECRET:url_password>@{stripped[scheme_end:]}"

        return _URL.sub(replace, line)

    def _plugin_hits(self, plugin: Any, name: str, line: str) -> Iterator[str]:
        h = self._heuristic
        if name == "KeywordDetector":
            values = plugin.analyze_string(line, denylist_regex_to_group=self._keyword_regexes)
        elif name == "Base64HighEntropyString":
            values = plugin.analyze_string(line)
        else:
            values = _regex_hits(plugin.denylist, line)
        for value in values:
            if not value or PLACEHOLDER_RE.search(value):
                continue
            if name == "Base64HighEntropyString" and (
                len(value) < 23 or _HEX.fullmatch(value) or _entropy(value) <= 4.5
            ):
                # the plugin's default limit, which its scanner applies after the match (its own entropy loop
                # costs 100 us a string; under 23 characters no string has 4.5 bits a character). Hex has at
                # most 4 bits a character: git hashes and checksums are common and no secret.
                continue
            if name in ("KeywordDetector", "Base64HighEntropyString") and (
                # detect-secrets' own false-positive filters for these two (its scanner applies them)
                h.is_templated_secret(value)
                or h.is_prefixed_with_dollar_sign(value)
                or h.is_indirect_reference(line)
                or h.is_sequential_string(value)
                or h.is_potential_uuid(value)
                or h.is_likely_id_string(value, line, plugin)
            ):
                continue
            yield value


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character (detect-secrets' `calculate_shannon_entropy` over the characters of
    its base64 charset, which are all a match holds)."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _regex_hits(denylist: Any, line: str) -> Iterator[str]:
    """The secrets a regex plugin's patterns find in `line`. Not the plugin's own `analyze_string`: it yields
    `findall`'s groups, and a group is sometimes the secret (the 40 characters after `aws_secret_access_key`) and
    sometimes a prefix (`(ghp|gho|…)_…` yields just `ghp`). Here a group of 16 characters or more is the secret,
    else the whole match is."""
    for rx in denylist:
        for m in rx.finditer(line):
            groups = [g for g in m.groups() if g and len(g) >= 16]
            yield max(groups, key=len) if groups else m.group(0)


_SCRUBBER: Scrubber | None = None


def scrubber() -> Scrubber:
    """This process's scrubber (its plugins and cache are made once)."""
    global _SCRUBBER
    if _SCRUBBER is None:
        _SCRUBBER = Scrubber()
    return _SCRUBBER


def count_keys(counts: Counter) -> dict[str, int]:
    """The stage-count names of a scrubber's counts: `secrets_<kind>` ("secrets_email", "secrets_aws_key", …)."""
    return {f"secrets_{k}": v for k, v in counts.items() if v}
