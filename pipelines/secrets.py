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
_EMAIL = re.compile(r"(?<![\w.%+-])(?!git@)[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
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


def _gate(plugins: list[Any]) -> re.Pattern:
    """One regex that every line holding something to replace matches: the plugins' own patterns (each with its
    flags), their keywords, and what the own patterns start with."""
    parts = [r"@", r"://", r"PRIVATE KEY", r"PuTTY-User-Key-File", rf"(?i:{_KEYWORDS})", r"[\"'][\w+/=-]{20,}"]
    for p in plugins:
        for rx in getattr(p, "denylist", ()):
            flags = "i" if rx.flags & re.I else ""
            parts.append(f"(?{flags}:{rx.pattern})" if flags else f"(?:{rx.pattern})")
    return re.compile("|".join(parts))


class Scrubber:
    """Replaces secrets and e-mail addresses by placeholders; one per process (see `scrubber()`)."""

    def __init__(self, max_cached: int = 20_000) -> None:
        from detect_secrets.filters import heuristic
        from detect_secrets.plugins.keyword import QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP

        self.plugins = _plugins()
        self.gate = _gate(self.plugins)
        self._heuristic = heuristic
        self._keyword_regexes = QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP
        self.max_cached = max_cached
        self._cache: dict[str, tuple[str, Counter]] = {}

    # -- the public calls -------------------------------------------------------------------------------
    def scrub(self, text: str) -> tuple[str, Counter]:
        """(`text` with every secret and address replaced, {kind: replacements}); cached by text."""
        hit = self._cache.get(text)
        if hit is None:
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            lines, counts = self.scrub_lines(text)
            hit = self._cache[text] = ("".join(lines) if any(counts) else text, sum(counts, Counter()))
        return hit[0], Counter(hit[1])

    def scrub_lines(self, text: str) -> tuple[list[str], list[Counter]]:
        """`text` split after each '\\n', scrubbed, and the replacements made on each line (a private-key
        block counts on its first line). The line breaks stay where they were."""
        lines = text.split("\n")
        lines = [ln + "\n" for ln in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        counts = [Counter() for _ in lines]
        if not text or not self.gate.search(text):
            return lines, counts
        if "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text:
            text = self._private_keys(text, counts)
            lines = text.split("\n")
            lines = [ln + "\n" for ln in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        starts = [0]
        for ln in lines[:-1]:
            starts.append(starts[-1] + len(ln))
        hit_lines = sorted({_line_of(starts, m.start()) for m in self.gate.finditer(text)})
        for i in hit_lines:
            lines[i] = self._scrub_line(lines[i], counts[i])
        return lines, counts

    # -- the parts ---------------------------------------------------------------------------------------
    def _private_keys(self, text: str, counts: list[Counter]) -> str:
        def replace(m: re.Match) -> str:
            counts[text.count("\n", 0, m.start())]["private_key"] += 1
            # the block's line breaks stay (line numbers hold); in a diff, so does each line's +/-/space marker
            body = m.group(0).split("\n")[1:]
            marker = body[0][:1] if body and body[0][:1] in ("+", "-", " ") else ""
            if any(ln[:1] != marker for ln in body):
                marker = ""
            return "<SECRET:private_key>" + ("\n" + marker) * len(body)

        text = _PRIVATE_KEY_BLOCK.sub(replace, text)
        return _PUTTY_KEY.sub(replace, text)

    def _scrub_line(self, line: str, counts: Counter) -> str:
        found: dict[str, str] = {}  # secret value -> kind
        if "://" in line:
            line = self._url_passwords(line, counts)
        for value, kind in self._plugin_hits(line):
            found.setdefault(value, kind)
        for value in sorted(found, key=len, reverse=True):
            n = line.count(value)
            if n:
                line = line.replace(value, f"<SECRET:{found[value]}>")
                counts[found[value]] += n
        if "@" in line:
            line, n = _EMAIL.subn(EMAIL_PLACEHOLDER, line)
            counts["email"] += n
        return line

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

    def _plugin_hits(self, line: str) -> Iterator[tuple[str, str]]:
        h = self._heuristic
        for plugin in self.plugins:
            name = type(plugin).__name__
            if name == "KeywordDetector":
                values = plugin.analyze_string(line, denylist_regex_to_group=self._keyword_regexes)
            elif name == "Base64HighEntropyString":
                values = plugin.analyze_string(line)
            else:
                values = _regex_hits(plugin.denylist, line)
            for value in values:
                if not value or PLACEHOLDER_RE.search(value):
                    continue
                if name in ("KeywordDetector", "Base64HighEntropyString"):
                    # detect-secrets' own false-positive filters for these two (its scanner applies them)
                    if (
                        h.is_templated_secret(value)
                        or h.is_prefixed_with_dollar_sign(value)
                        or h.is_indirect_reference(line)
                        or h.is_sequential_string(value)
                        or h.is_potential_uuid(value)
                        or h.is_likely_id_string(value, line, plugin)
                    ):
                        continue
                    if name == "Base64HighEntropyString" and plugin.calculate_shannon_entropy(value) <= 4.5:
                        continue  # the plugin's default limit (its scanner applies it after the match)
                yield value, KINDS[name]


def _regex_hits(denylist: Any, line: str) -> Iterator[str]:
    """The secrets a regex plugin's patterns find in `line`. Not the plugin's own `analyze_string`: it yields
    `findall`'s groups, and a group is sometimes the secret (the 40 characters after `aws_secret_access_key`) and
    sometimes a prefix (`(ghp|gho|…)_…` yields just `ghp`). Here a group of 16 characters or more is the secret,
    else the whole match is."""
    for rx in denylist:
        for m in rx.finditer(line):
            groups = [g for g in m.groups() if g and len(g) >= 16]
            yield max(groups, key=len) if groups else m.group(0)


def _line_of(starts: list[int], pos: int) -> int:
    from bisect import bisect_right

    return bisect_right(starts, pos) - 1


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
