"""Tasks from commit messages when no LLM is configured, cleaned the way CommitPack cleans them (OctoPack,
arXiv 2308.07124 §2): merges, bot commits and work-in-progress commits are dropped; sign-off trailers, SHAs, URLs
and PR/issue references are removed; what is left must still say something."""

from __future__ import annotations

import re

from hybrid.config.pipeline import DEFAULT_BOT_AUTHOR_PATTERNS

TRAILER_RE = re.compile(
    r"^\s*(signed-off-by|co-authored-by|reviewed-by|acked-by|tested-by|reported-by|suggested-by|cc|change-id|"
    r"reviewed-on|git-svn-id|bug|fixes|closes|resolves|see-also|helped-by)\s*:.*$",
    re.I,
)
URL_RE = re.compile(r"(https?://|www\.)\S+", re.I)
SHA_RE = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", re.I)
REF_RE = re.compile(r"\((?:#|gh-|GH-)\d+\)|(?<!\w)(?:#|gh-|GH-)\d+\b")
TAG_RE = re.compile(r"\[(?:skip ci|ci skip|no ci|skip-ci|wip)\]", re.I)
BOT_AUTHOR_RE = re.compile("|".join(DEFAULT_BOT_AUTHOR_PATTERNS), re.I)  # `pipeline.bot_author_patterns`' default
BOT_MESSAGE_RE = re.compile(
    r"^(bump \S+ from \S+ to \S+|update dependency\b|chore\(deps\)|\[bot\]|"
    r"\[pre-commit\.ci\]|pre-commit autoupdate|auto-?generated|automated (commit|update))",
    re.I,
)
MERGE_RE = re.compile(r"^(merge (pull request|branch|remote-tracking|tag|commit|\S+ into)|merged? \S+ into)", re.I)
WIP_RE = re.compile(r"^(wip\b|work in progress|fixup!|squash!|amend!|tmp\b|temp commit|checkpoint\b)", re.I)
UNINFORMATIVE = {
    "update",
    "updates",
    "updated",
    "fix",
    "fixes",
    "fixed",
    "changes",
    "change",
    "minor",
    "misc",
    "cleanup",
    "clean up",
    "test",
    "tests",
    "typo",
    "stuff",
    "commit",
    "initial commit",
    "first commit",
    "init",
    "save",
    "more",
    "wip",
    "done",
    "asdf",
    "..",
    ".",
}
BULLET_RE = re.compile(r"^\s*[-*•]\s+(.*\S)\s*$")


def drop_reason(message: str, author: str = "", parents: int = 1) -> str | None:
    """Why CommitPack would drop this commit, or None to keep it."""
    subject = (message or "").strip().splitlines()[0].strip() if (message or "").strip() else ""
    if parents > 1 or MERGE_RE.match(subject):
        return "merge"
    if BOT_AUTHOR_RE.search(author or "") or BOT_MESSAGE_RE.match(subject):
        return "bot"
    if WIP_RE.match(subject) or TAG_RE.search(subject) and "wip" in subject.lower():
        return "wip"
    return None


def clean_line(line: str) -> str:
    line = TAG_RE.sub(" ", line)
    line = URL_RE.sub(" ", line)
    line = REF_RE.sub(" ", line)
    line = SHA_RE.sub(" ", line)
    line = re.sub(r"\s+", " ", line).strip(" -:;,")
    line = re.sub(r"\(\s*\)", "", line).strip()
    return line


def clean_message(message: str) -> tuple[str, list[str]]:
    """(subject, bullet items of the body), cleaned; trailers removed."""
    lines = [ln for ln in (message or "").splitlines() if not TRAILER_RE.match(ln)]
    subject = clean_line(lines[0]) if lines else ""
    subject = re.sub(r"^[a-z]+(\([^)]*\))?!?:\s*", lambda m: "" if len(m.group(0)) < 20 else m.group(0), subject)
    bullets = [clean_line(m.group(1)) for ln in lines[1:] if (m := BULLET_RE.match(ln))]
    return subject.rstrip(". "), [b.rstrip(". ") for b in bullets if b]


def informative(text: str) -> bool:
    t = text.strip().lower().rstrip(".!")
    return len(t) >= 8 and len(t.split()) >= 2 and t not in UNINFORMATIVE


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] if text else text


def tasks_from_message(
    message: str, author: str = "", parents: int = 1, max_tasks: int = 10
) -> tuple[list[dict], str | None]:
    """(tasks, drop reason). Tasks apply to the whole commit (`function_ids: []`)."""
    reason = drop_reason(message, author, parents)
    if reason:
        return [], reason
    subject, bullets = clean_message(message)
    descriptions = [d for d in [subject, *bullets] if informative(d)]
    if not descriptions:
        return [], "uninformative"
    seen, tasks = set(), []
    for d in descriptions:
        key = re.sub(r"\W+", " ", d.lower()).strip()
        if key in seen:
            continue
        seen.add(key)
        tasks.append({"id": f"task_{len(tasks) + 1}", "description": _sentence(d)[:600], "function_ids": []})
        if len(tasks) >= max_tasks:
            break
    return tasks, None
