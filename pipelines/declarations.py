"""Declarations (functions, methods, classes, structs, enums, traits, interfaces) found with tree-sitter.

One query per grammar captures every candidate node in C; names are qualified with a stack of the enclosing
scopes (captures come in source order, outer before inner), so nothing walks the tree node by node in Python.

    `Class.method`            Python/JS/TS/Java/C++ methods
    `Type.method`             Rust methods in `impl Type`, Go methods with receiver `Type`
    `<Type as Trait>.method`  Rust methods in `impl Trait for Type` (so `fmt` of Debug and Display differ)
    `outer.inner`             nested functions
Repeated names in one file (overloads, redefinitions) get `#2`, `#3` in source order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pipelines.languages import get_language, get_parser

# node type -> kind ("" = a scope that names what is inside it but is not a record itself)
NODE_KINDS: dict[str, dict[str, str]] = {
    "python": {"function_definition": "function", "class_definition": "class"},
    "rust": {"function_item": "function", "struct_item": "struct", "enum_item": "enum", "union_item": "union",
             "trait_item": "trait", "impl_item": "", "mod_item": ""},
    "go": {"function_declaration": "function", "method_declaration": "method", "type_spec": "type"},
    "javascript": {"function_declaration": "function", "generator_function_declaration": "function",
                   "class_declaration": "class", "method_definition": "method", "variable_declarator": "function"},
    "typescript": {"function_declaration": "function", "generator_function_declaration": "function",
                   "class_declaration": "class", "abstract_class_declaration": "class",
                   "interface_declaration": "interface", "enum_declaration": "enum",
                   "method_definition": "method", "variable_declarator": "function", "internal_module": ""},
    "java": {"class_declaration": "class", "record_declaration": "class", "interface_declaration": "interface",
             "annotation_type_declaration": "interface", "enum_declaration": "enum",
             "method_declaration": "method", "constructor_declaration": "method"},
    "c": {"function_definition": "function", "struct_specifier": "struct", "union_specifier": "union",
          "enum_specifier": "enum"},
    "cpp": {"function_definition": "function", "class_specifier": "class", "struct_specifier": "struct",
            "union_specifier": "union", "enum_specifier": "enum", "namespace_definition": ""},
}
NODE_KINDS["tsx"] = NODE_KINDS["typescript"]

# Kinds whose functions are methods.
CLASS_LIKE = {"class", "struct", "interface", "trait", "impl", "enum", "union"}
# JS/TS `const f = () => …` counts as a function; other variable declarators are not captured.
FUNCTION_VALUES = ("arrow_function", "function_expression", "function", "generator_function")


@dataclass
class ParsedFile:
    """What a parse of one blob gives: its declarations (file-independent) and whether it parsed cleanly."""

    has_error: bool
    declarations: list[dict]


@functools.lru_cache(maxsize=None)
def _query(key: str):
    import tree_sitter

    language = get_language(key)
    parts = []
    for node_type in NODE_KINDS[key]:
        if language.id_for_node_kind(node_type, True) is None:
            continue  # this grammar version has no such node
        if node_type == "variable_declarator":
            values = " ".join(f"({v})" for v in FUNCTION_VALUES if language.id_for_node_kind(v, True) is not None)
            parts.append(f"(variable_declarator value: [{values}]) @d")
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
        if node.type in ("identifier", "field_identifier", "destructor_name", "operator_name",
                         "qualified_identifier", "type_identifier", "template_function"):
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
        name = f"{rtype}.{_text(node.child_by_field_name('name'))}" if rtype else _text(node.child_by_field_name("name"))
    elif t == "type_spec":
        tnode = node.child_by_field_name("type")
        if tnode is None or tnode.type not in ("struct_type", "interface_type"):
            return None
        kind = "struct" if tnode.type == "struct_type" else "interface"
        name = _text(node.child_by_field_name("name"))
        parent = node.parent
        if parent is not None and parent.type == "type_declaration" and parent.named_child_count == 1:
            code_node = parent
    elif t == "variable_declarator":
        name = _text(node.child_by_field_name("name"))
        parent = node.parent
        if parent is not None and parent.type in ("lexical_declaration", "variable_declaration") \
                and parent.named_child_count == 1:
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


def parse_declarations(source: bytes, key: str) -> ParsedFile:
    """Parse `source` with grammar `key` (see languages.grammar_key) and list its declarations."""
    tree = get_parser(key).parse(source)
    root = tree.root_node
    import tree_sitter

    captures = tree_sitter.QueryCursor(_query(key)).captures(root).get("d", [])
    captures.sort(key=lambda n: (n.start_byte, -n.end_byte))
    stack: list[tuple[int, str, str]] = []  # (end_byte, qualified name, kind) of the enclosing scopes
    seen: dict[tuple[str, str], int] = {}
    out: list[dict] = []
    for node in captures:
        while stack and stack[-1][0] <= node.start_byte:
            stack.pop()
        described = _describe(node, key)
        if described is None:
            continue
        kind, name, code_node = described
        if kind == "" and node.type == "impl_item":
            scope_kind = "impl"
        else:
            scope_kind = kind or "module"
        enclosing_kind = stack[-1][2] if stack else None
        qualified = f"{stack[-1][1]}.{name}" if stack else name
        stack.append((node.end_byte, qualified, scope_kind))
        if not kind:
            continue  # impl blocks, modules, namespaces only qualify what they contain
        if kind == "function" and enclosing_kind in CLASS_LIKE:
            kind = "method"
        n = seen.get((kind, qualified), 0) + 1
        seen[(kind, qualified)] = n
        record_name = qualified if n == 1 else f"{qualified}#{n}"
        out.append({
            "kind": kind, "name": record_name,
            "start_byte": code_node.start_byte, "end_byte": code_node.end_byte,
            "start_line": code_node.start_point[0] + 1, "end_line": _end_line(code_node),
            "code": source[code_node.start_byte:code_node.end_byte].decode("utf-8", "replace"),
        })
    return ParsedFile(has_error=root.has_error, declarations=out)
