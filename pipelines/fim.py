"""Fill-in-the-Middle samples from changed declarations (AST-FIM, arXiv 2506.00204, adapted to real edits).

For an added or modified declaration the middle is the span of lines the commit added or changed inside it, in
the file after the commit. When the smallest AST node around that span (or the run of its children that the
span touches) is at most `fim_widen_factor` times longer, the middle is widened to those whole nodes, so it
never starts or ends inside a statement. Prefix and suffix are the rest of the file, cut at line boundaries
to `fim_max_prefix_chars` / `fim_max_suffix_chars`. Middles over the size bounds are dropped
(`middle_too_large`); a declaration whose change only removed lines has no middle (`no_added_lines`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hybrid.config.pipeline import PipelineConfig
from pipelines.languages import get_parser, grammar_key, language_of
from pipelines.secrets import scrubber


def split_lines(text: str) -> list[str]:
    """Lines with their '\\n', numbered as git numbers them (str.splitlines also splits on \\f, \\u2028, …)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


@dataclass
class FileContext:
    path: str
    lines: list[str]
    added_lines: set[int]  # 1-based line numbers in the file after the commit
    source: bytes
    grammar: str | None
    _tree: object = None
    # The lines the sample's text is cut from: `lines` with secrets replaced (pipelines/secrets.py; line breaks
    # stay, so line numbers match), and the replacements on each. `lines` itself (the file as it is) decides
    # the middle and its widening, so scrubbing changes a sample's text, never which sample it is.
    out_lines: list[str] = field(default_factory=list)
    line_secrets: dict[int, Counter] = field(default_factory=dict)  # by 0-based line index, lines with some

    def tree(self):
        if self._tree is None and self.grammar:
            self._tree = get_parser(self.grammar).parse(self.source)
        return self._tree


class FimBuilder:
    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg

    def file_context(self, repo, old_id: str | None, new_id: str, path: str) -> FileContext:
        new_blob = repo[new_id]
        source = new_blob.data
        lines = split_lines(source.decode("utf-8", "replace"))
        if old_id is None:
            added = set(range(1, len(lines) + 1))
        else:
            patch = repo[old_id].diff(new_blob, context_lines=0)
            added = {ln.new_lineno for h in patch.hunks for ln in h.lines if ln.origin == "+"}
        language = language_of(path)
        fc = FileContext(path, lines, added, source, grammar_key(path, language) if language else None)
        if self.cfg.scrub_secrets:
            fc.out_lines, fc.line_secrets = scrubber().scrub_lines("".join(lines))
        return fc

    def _fits(self, lines: list[str], start: int, end: int) -> bool:
        n = end - start + 1
        return (
            n <= self.cfg.fim_max_middle_lines
            and sum(map(len, lines[start - 1 : end])) <= self.cfg.fim_max_middle_chars
        )

    def _widen(self, fc: FileContext, start: int, end: int, decl_start: int, decl_end: int) -> tuple[int, int]:
        """Whole-node line span around [start, end] inside the declaration, if small enough, else the span."""
        tree = fc.tree()
        if tree is None:
            return start, end
        first, last = fc.lines[start - 1], fc.lines[end - 1]
        col0 = len(first[: len(first) - len(first.lstrip())].encode("utf-8"))
        col1 = len(last.rstrip().encode("utf-8"))
        node = tree.root_node.named_descendant_for_point_range((start - 1, col0), (end - 1, max(col1 - 1, 0)))
        limit = self.cfg.fim_widen_factor * (end - start + 1)
        candidates = []
        if node is not None:
            candidates.append((node.start_point[0] + 1, _end_line(node)))
            touched = [c for c in node.named_children if c.start_point[0] + 1 <= end and _end_line(c) >= start]
            if touched:
                candidates.append((touched[0].start_point[0] + 1, _end_line(touched[-1])))
        for s, e in candidates:
            if (
                decl_start <= s <= start
                and end <= e <= decl_end
                and (e - s + 1) <= limit
                and self._fits(fc.lines, s, e)
            ):
                return s, e
        return start, end

    def build(self, fc: FileContext, record: dict) -> tuple[dict | None, str | None]:
        """A sample (prefix/middle/suffix and line span) for one diff_ast record, or the reason there is none."""
        rng = record["after_range"]
        decl_start, decl_end = rng["start_line"], rng["end_line"]
        changed = sorted(n for n in fc.added_lines if decl_start <= n <= decl_end)
        if not changed:
            return None, "no_added_lines"
        start, end = changed[0], changed[-1]
        while start < end and not fc.lines[start - 1].strip():
            start += 1  # an added blank line before/after the change is not part of the middle
        while end > start and not fc.lines[end - 1].strip():
            end -= 1
        s, e = self._widen(fc, start, end, decl_start, decl_end)
        if not self._fits(fc.lines, s, e):
            return None, "middle_too_large"
        out = fc.out_lines or fc.lines
        prefix = "".join(out[: s - 1])
        suffix = "".join(out[e:])
        mp, ms = self.cfg.fim_max_prefix_chars, self.cfg.fim_max_suffix_chars
        if len(prefix) > mp:
            cut = prefix[len(prefix) - mp :] if mp else ""
            nl = cut.find("\n")
            prefix = cut[nl + 1 :] if nl >= 0 else ""
        if len(suffix) > ms:
            cut = suffix[:ms]
            nl = cut.rfind("\n")
            suffix = cut[: nl + 1] if nl >= 0 else ""
        sample = {
            "fim_prefix": prefix,
            "fim_middle": "".join(out[s - 1 : e]),
            "fim_suffix": suffix,
            "middle_start_line": s,
            "middle_end_line": e,
            "widened": (s, e) != (start, end),
        }
        if fc.line_secrets:  # the replacements on the lines the sample kept (prefix and suffix are cut above)
            first = s - 1 - prefix.count("\n")
            last = e + suffix.count("\n") + (1 if suffix and not suffix.endswith("\n") else 0)
            sample["secrets"] = Counter()
            for i, c in fc.line_secrets.items():
                if first <= i < last:
                    sample["secrets"].update(c)
        return sample, None


def _end_line(node) -> int:
    row, col = node.end_point
    return row if col == 0 and row > node.start_point[0] else row + 1
