"""Declarations (functions, methods, classes, structs, enums, traits, interfaces) found with tree-sitter.

One query per grammar captures every candidate node in C; names are qualified with a stack of the enclosing
scopes (captures come in source order, outer before inner), so nothing walks the tree node by node in Python.

    `Class.method`            Python/JS/TS/Java/C++ methods
    `Type.method`             Rust methods in `impl Type`, Go methods with receiver `Type`
    `<Type as Trait>.method`  Rust methods in `impl Trait for Type` (so `fmt` of Debug and Display differ)
    `outer.inner`             nested functions
Repeated names in one file (overloads, redefinitions) get `#2`, `#3` in source order.

Syntax errors: tree-sitter recovers from them, marking what it could not parse with ERROR and MISSING nodes. A
declaration whose own subtree holds one is *broken*: it is kept apart (`ParsedFile.broken`) from the clean ones
(`ParsedFile.declarations`), so one broken function or stray macro does not cost the rest of the file. Numbering
(`#2`) counts broken declarations too, so a clean one keeps its name when a namesake breaks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pipelines.languages import get_language, get_parser

# node type -> kind ("" = a scope that names what is inside it but is not a record itself)
NODE_KINDS: dict[str, dict[str, str]] = {
    "python": {"function_definition": "function", "class_definition": "class"},
    "rust": {
        "function_item": "function",
        "struct_item": "struct",
        "enum_item": "enum",
        "union_item": "union",
        "trait_item": "trait",
        "impl_item": "",
        "mod_item": "",
    },
    "go": {"function_declaration": "function", "method_declaration": "method", "type_spec": "type"},
    "javascript": {
        "function_declaration": "function",
        "generator_function_declaration": "function",
        "class_declaration": "class",
        "method_definition": "method",
        "variable_declarator": "function",
        "field_definition": "method",
    },
    "typescript": {
        "function_declaration": "function",
        "generator_function_declaration": "function",
        "class_declaration": "class",
        "abstract_class_declaration": "class",
        "interface_declaration": "interface",
        "enum_declaration": "enum",
        "method_definition": "method",
        "variable_declarator": "function",
        "internal_module": "",
        "public_field_definition": "method",
    },
    "java": {
        "class_declaration": "class",
        "record_declaration": "class",
        "interface_declaration": "interface",
        "annotation_type_declaration": "interface",
        "enum_declaration": "enum",
        "method_declaration": "method",
        "constructor_declaration": "method",
    },
    "c": {
        "function_definition": "function",
        "struct_specifier": "struct",
        "union_specifier": "union",
        "enum_specifier": "enum",
    },
    "cpp": {
        "function_definition": "function",
        "class_specifier": "class",
        "struct_specifier": "struct",
        "union_specifier": "union",
        "enum_specifier": "enum",
        "namespace_definition": "",
    },
}
NODE_KINDS["tsx"] = NODE_KINDS["typescript"]

# Parents whose range is a declaration's code (`_describe`): decorators, `typedef struct {…} Foo;`, Go's
# `type Foo struct {…}`, JS `const f = () => …`.
CODE_WRAPPERS = {
    "decorated_definition",
    "type_definition",
    "type_declaration",
    "lexical_declaration",
    "variable_declaration",
}
# Kinds whose functions are methods.
CLASS_LIKE = {"class", "struct", "interface", "trait", "impl", "enum", "union"}
# JS/TS `const f = () => …` counts as a function; other variable declarators are not captured.
FUNCTION_VALUES = ("arrow_function", "function_expression", "function", "generator_function")


@dataclass
class ParsedFile:
    """What a parse of one blob gives: its declarations (file-independent) and whether it parsed cleanly.

    `declarations` are those whose own syntax subtree is clean; `broken` those that contain an ERROR or MISSING
    node (dropped from the outputs and counted as `decl_parse_error`). A file with syntax errors is still
    `usable` while at least one declaration is clean; `source` is then kept, so that the differ can tell a
    declaration that tree-sitter folded into the part it could not parse from one that was deleted."""

    has_error: bool  # the tree has an ERROR or MISSING node somewhere
    declarations: list[dict]
    raw_names: list[str] = field(default_factory=list)  # names before `#n` numbering (for update_declarations)
    broken: list[dict] = field(default_factory=list)
    broken_raw_names: list[str] = field(default_factory=list)
    source: bytes | None = None  # the blob, only when has_error

    @property
    def usable(self) -> bool:
        """Clean, or with syntax errors but at least one clean declaration left."""
        return not self.has_error or bool(self.declarations)


@functools.cache
def _query(key: str):
    import tree_sitter

    language = get_language(key)
    parts = []
    for node_type in NODE_KINDS[key]:
        if language.id_for_node_kind(node_type, True) is None:
            continue  # this grammar version has no such node
        if node_type in ("variable_declarator", "field_definition", "public_field_definition"):
            # `const f = () => …` and class fields `handle = () => …` hold functions; other values do not count
            values = " ".join(f"({v})" for v in FUNCTION_VALUES if language.id_for_node_kind(v, True) is not None)
            parts.append(f"({node_type} value: [{values}]) @d")
        elif node_type in ("struct_specifier", "union_specifier", "enum_specifier", "class_specifier"):
            parts.append(f"({node_type} body: (_)) @d")  # definitions only, not `struct foo *p`
        else:
            parts.append(f"({node_type}) @d")
    return tree_sitter.Query(language, "\n".join(parts))


def _text(node) -> str:
    return node.text.decode("utf-8", "replace")


def _base_type_name(node) -> str:
    """`Foo<T>` -> `Foo`, `&mut Foo` -> `Foo`, `*Foo` -> `Foo`, `pkg.Foo` -> `pkg.Foo`."""
    while node is not None and node.type in ("generic_type", "reference_type", "pointer_type"):
        inner = node.child_by_field_name("type")
        if inner is None:
            inner = next((c for c in node.named_children if c.type not in ("lifetime", "mutable_specifier")), None)
        if inner is None:
            break
        node = inner
    return _text(node) if node is not None else "?"


def _c_declarator_name(node) -> str | None:
    """The name inside a C/C++ declarator chain (`*f(int)` -> `f`, `Foo::bar(…)` -> `Foo.bar`)."""
    seen = 0
    while node is not None and seen < 20:
        seen += 1
        if node.type in (
            "identifier",
            "field_identifier",
            "destructor_name",
            "operator_name",
            "qualified_identifier",
            "type_identifier",
            "template_function",
        ):
            return _text(node).replace("::", ".")
        inner = node.child_by_field_name("declarator")
        if inner is None:
            inner = next((c for c in node.named_children if c.type.endswith(("declarator", "identifier"))), None)
        node = inner
    return None


def _describe(node, lang: str) -> tuple[str, str, object] | None:
    """(kind, simple name, node whose range is the record's code) for a captured node, or None to skip it."""
    kind = NODE_KINDS[lang][node.type]
    t = node.type
    code_node = node
    if lang in ("c", "cpp") and t == "function_definition":
        name = _c_declarator_name(node.child_by_field_name("declarator"))
        if lang == "cpp" and name and "." in name:
            kind = "method"  # an out-of-line `Widget::size() { … }`
    elif t in ("struct_specifier", "union_specifier", "enum_specifier", "class_specifier"):
        name_node = node.child_by_field_name("name")
        if name_node is None:
            parent = node.parent  # `typedef struct { … } Foo;` takes the typedef's name
            if parent is None or parent.type != "type_definition":
                return None
            name = _c_declarator_name(parent.child_by_field_name("declarator"))
            code_node = parent
        else:
            name = _text(name_node)
    elif t == "impl_item":
        type_name = _base_type_name(node.child_by_field_name("type"))
        trait = node.child_by_field_name("trait")
        name = f"<{type_name} as {_base_type_name(trait)}>" if trait is not None else type_name
    elif t == "method_declaration" and lang == "go":
        receiver = node.child_by_field_name("receiver")
        rtype = None
        if receiver is not None:
            param = next((c for c in receiver.named_children if c.type == "parameter_declaration"), None)
            if param is not None:
                rtype = _base_type_name(param.child_by_field_name("type"))
        name = (
            f"{rtype}.{_text(node.child_by_field_name('name'))}" if rtype else _text(node.child_by_field_name("name"))
        )
    elif t == "type_spec":
        tnode = node.child_by_field_name("type")
        if tnode is None or tnode.type not in ("struct_type", "interface_type"):
            return None
        kind = "struct" if tnode.type == "struct_type" else "interface"
        name = _text(node.child_by_field_name("name"))
        parent = node.parent
        if parent is not None and parent.type == "type_declaration" and parent.named_child_count == 1:
            code_node = parent
    elif t == "field_definition":
        prop = node.child_by_field_name("property")
        if prop is None:
            return None
        name = _text(prop)
    elif t == "variable_declarator":
        name = _text(node.child_by_field_name("name"))
        parent = node.parent
        if (
            parent is not None
            and parent.type in ("lexical_declaration", "variable_declaration")
            and parent.named_child_count == 1
        ):
            code_node = parent
    else:
        name_node = node.child_by_field_name("name")
        if name_node is None:
            return None
        name = _text(name_node)
    if not name:
        return None
    if lang == "python" and node.parent is not None and node.parent.type == "decorated_definition":
        code_node = node.parent  # decorators are part of the code
    return kind, name, code_node


def _end_line(node) -> int:
    row, col = node.end_point
    # a node ending right after a newline ends on the previous line
    return row if col == 0 and row > node.start_point[0] else row + 1


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix, by binary search over slice equality (memcmp), not a Python loop."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid :] == b[len(b) - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _point(data: bytes, offset: int) -> tuple[int, int]:
    row = data.count(b"\n", 0, offset)
    return row, offset - (data.rfind(b"\n", 0, offset) + 1)


def _hunk_edits(old: bytes, new: bytes, hunks) -> list[tuple[int, int, int, int]]:
    """Byte spans (old_start, old_end, new_start, new_end) of git hunks (old_start, old_lines, new_start,
    new_lines; 1-based lines; a hunk of 0 lines sits after the line it names)."""
    import numpy as np

    old_nl = np.flatnonzero(np.frombuffer(old, np.uint8) == 10)
    new_nl = np.flatnonzero(np.frombuffer(new, np.uint8) == 10)

    def at(nl, size, line):  # byte offset where 1-based `line` begins
        if line <= 1:
            return 0
        return int(nl[line - 2]) + 1 if line - 2 < len(nl) else size

    spans = []
    for o_start, o_lines, n_start, n_lines in hunks:
        os_ = at(old_nl, len(old), o_start if o_lines else o_start + 1)
        ns_ = at(new_nl, len(new), n_start if n_lines else n_start + 1)
        spans.append(
            (
                os_,
                at(old_nl, len(old), o_start + o_lines) if o_lines else os_,
                ns_,
                at(new_nl, len(new), n_start + n_lines) if n_lines else ns_,
            )
        )
    return spans


def edit_tree(tree, old: bytes, new: bytes, hunks=None):
    """A copy of `tree` (parsed from `old`) edited to match `new`, so tree-sitter re-parses only what changed:
    one edit per git hunk when `hunks` are given, else one edit from the first to the last changed byte.
    Returns (tree, (start, old_end, new_end)) with the span of all the edits."""
    tree = tree.copy()
    spans = _hunk_edits(old, new, hunks) if hunks else []
    if spans and spans[0][0] == spans[0][2]:  # (else the hunks do not fit these bytes: fall back)
        # last hunk first: the bytes before a hunk are still the old ones when it is applied
        for os_, oe, ns_, ne in reversed(spans):
            seg = new[ns_:ne]
            srow, scol = _point(old, os_)
            rows = seg.count(b"\n")
            end_point = (srow + rows, len(seg) - (seg.rfind(b"\n") + 1) if rows else scol + len(seg))
            tree.edit(
                start_byte=os_,
                old_end_byte=oe,
                new_end_byte=os_ + (ne - ns_),
                start_point=(srow, scol),
                old_end_point=_point(old, oe),
                new_end_point=end_point,
            )
        return tree, (spans[0][0], spans[-1][1], spans[-1][3])
    start = _common_prefix(old, new)
    suffix = _common_suffix(old, new, min(len(old), len(new)) - start)
    old_end, new_end = len(old) - suffix, len(new) - suffix
    tree.edit(
        start_byte=start,
        old_end_byte=old_end,
        new_end_byte=new_end,
        start_point=_point(old, start),
        old_end_point=_point(old, old_end),
        new_end_point=_point(new, new_end),
    )
    return tree, (start, old_end, new_end)


def parse_tree(source: bytes, key: str, old_tree=None, old_source: bytes | None = None, hunks=None):
    """(tree of `source`, edit or None); incremental when the tree of an earlier version is given. The edit is
    (start, old_end, new_end, the old tree edited to match), what update_declarations takes."""
    parser = get_parser(key)
    if old_tree is not None and old_source is not None:
        edited, edit = edit_tree(old_tree, old_source, source, hunks)
        return parser.parse(source, edited), (*edit, edited)
    return parser.parse(source), None


def _extract(root, key: str, source: bytes, byte_range: tuple[int, int] | None = None) -> list[tuple[dict, bool]]:
    """(declaration, broken) with qualified names (not yet numbered) from the captures of `root`, all of them or
    those of the nodes that intersect `byte_range` (which include every scope around the range); `broken`: the
    declaration's code holds an ERROR or MISSING node (tree-sitter's `has_error` covers both)."""
    import tree_sitter

    cursor = tree_sitter.QueryCursor(_query(key))
    if byte_range is not None:
        cursor.set_byte_range(*byte_range)
    captures = cursor.captures(root).get("d", [])
    captures.sort(key=lambda n: (n.start_byte, -n.end_byte))
    stack: list[tuple[int, str, str]] = []  # (end_byte, qualified name, kind) of the enclosing scopes
    out: list[tuple[dict, bool]] = []
    for node in captures:
        while stack and stack[-1][0] <= node.start_byte:
            stack.pop()
        described = _describe(node, key)
        if described is None:
            continue
        kind, name, code_node = described
        scope_kind = "impl" if node.type == "impl_item" else (kind or "module")
        enclosing_kind = stack[-1][2] if stack else None
        qualified = f"{stack[-1][1]}.{name}" if stack else name
        stack.append((node.end_byte, qualified, scope_kind))
        if not kind:
            continue  # impl blocks, modules, namespaces only qualify what they contain
        if kind == "function" and enclosing_kind in CLASS_LIKE:
            kind = "method"
        out.append(
            (
                {
                    "kind": kind,
                    "name": qualified,
                    "start_byte": code_node.start_byte,
                    "end_byte": code_node.end_byte,
                    "start_line": code_node.start_point[0] + 1,
                    "end_line": _end_line(code_node),
                    "code": source[code_node.start_byte : code_node.end_byte].decode("utf-8", "replace"),
                },
                code_node.has_error,
            )
        )
    return out


def _finalize(records: list[tuple[dict, bool]], has_error: bool, source: bytes) -> ParsedFile:
    """Source order; repeated (kind, name) pairs numbered `#2`, `#3` (the raw names are kept for reuse), over
    clean and broken declarations together; then split into the two."""
    records.sort(key=lambda r: (r[0]["start_byte"], -r[0]["end_byte"]))
    clean, clean_raw, broken, broken_raw = [], [], [], []
    seen: dict[tuple[str, str], int] = {}
    for d, is_broken in records:
        raw = d["name"]
        n = seen[(d["kind"], raw)] = seen.get((d["kind"], raw), 0) + 1
        if n > 1:
            d["name"] = f"{raw}#{n}"
        if is_broken:
            broken.append(d)
            broken_raw.append(raw)
        else:
            clean.append(d)
            clean_raw.append(raw)
    return ParsedFile(
        has_error=has_error,
        declarations=clean,
        raw_names=clean_raw,
        broken=broken,
        broken_raw_names=broken_raw,
        source=source if has_error else None,
    )


def parse_declarations(source: bytes, key: str, tree=None) -> ParsedFile:
    """List the declarations of `source` (grammar `key`, see languages.grammar_key), parsing it unless its
    `tree` is given."""
    if tree is None:
        tree = get_parser(key).parse(source)
    return _finalize(_extract(tree.root_node, key, source), tree.root_node.has_error, source)


def _touched_span(root, a: int, b: int) -> tuple[int, int]:
    """The span of the children of the smallest node around [a, b] that [a, b] touches (or [a, b])."""
    container = root.descendant_for_byte_range(a, b) or root
    while container.parent is not None and not (
        container.start_byte <= a and container.end_byte >= b and container.child_count
    ):
        container = container.parent
    lo, hi = a, b
    for child in container.children:
        if child.end_byte >= a and child.start_byte <= b:
            lo, hi = min(lo, child.start_byte), max(hi, child.end_byte)
    return lo, hi


def _widen_to_wrappers(root, key: str, lo: int, hi: int) -> tuple[int, int]:
    """[lo, hi] widened to a wrapper around it (CODE_WRAPPERS) unless it lies inside the wrapped declaration:
    an edit in a decorator touches the record of the function below it, whose node the query would not reach."""
    node = root.descendant_for_byte_range(lo, hi)
    while node is not None:
        if node.type in CODE_WRAPPERS and not any(
            c.start_byte <= lo and c.end_byte >= hi and c.type in NODE_KINDS[key] for c in node.named_children
        ):
            lo, hi = min(lo, node.start_byte), max(hi, node.end_byte)
        node = node.parent
    return lo, hi


def update_declarations(
    source: bytes, key: str, tree, old: ParsedFile, old_tree, old_source: bytes, edit: tuple
) -> ParsedFile:
    """The declarations of `source` given those of an earlier version: the query runs only over the nodes
    around the edited bytes (and the whole of a decorated definition, a typedef … whose wrapper they touch);
    declarations wholly before them are kept, those after are shifted. `edit` is
    parse_tree's (start, old_end, new_end, edited old tree).
    With syntax errors on either side, error recovery can reshape the tree far from the edit (an unclosed
    brace swallows the rest of the file, an `impl` falls apart), so the span also covers every range whose
    syntax structure changed (tree-sitter's changed_ranges: outside them every byte keeps its ancestors).
    (tests/pipelines check this against a fresh parse over whole histories.)"""
    start, old_end, new_end, edited = edit
    delta = new_end - old_end
    n = len(source)
    lo_new, hi_new = _widen_to_wrappers(
        tree.root_node, key, *_touched_span(tree.root_node, max(start - 1, 0), min(new_end + 1, n))
    )
    lo_old, hi_old = _widen_to_wrappers(
        old_tree.root_node,
        key,
        *_touched_span(old_tree.root_node, max(start - 1, 0), min(old_end + 1, len(old_source))),
    )
    lo = min(lo_new, lo_old)
    hi = max(hi_new, hi_old + delta)  # in the new file's bytes
    if tree.root_node.has_error or old_tree.root_node.has_error:
        for changed in edited.changed_ranges(tree):
            lo, hi = min(lo, changed.start_byte), max(hi, changed.end_byte)
    line_delta = source.count(b"\n", 0, new_end) - old_source.count(b"\n", 0, old_end)
    merged: list[tuple[dict, bool]] = []
    for decls, raws, is_broken in ((old.declarations, old.raw_names, False), (old.broken, old.broken_raw_names, True)):
        for d, raw in zip(decls, raws):
            if d["end_byte"] <= lo:
                merged.append(({**d, "name": raw}, is_broken))
            elif d["start_byte"] >= hi - delta:
                merged.append(
                    (
                        {
                            **d,
                            "name": raw,
                            "start_byte": d["start_byte"] + delta,
                            "end_byte": d["end_byte"] + delta,
                            "start_line": d["start_line"] + line_delta,
                            "end_line": d["end_line"] + line_delta,
                        },
                        is_broken,
                    )
                )
    for d, is_broken in _extract(tree.root_node, key, source, (lo, hi)):
        if d["end_byte"] > lo and d["start_byte"] < hi or d["start_byte"] <= lo and d["end_byte"] >= hi:
            merged.append((d, is_broken))
    return _finalize(merged, tree.root_node.has_error, source)
