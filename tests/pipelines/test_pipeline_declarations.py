"""Declarations per language: exact kinds, qualified names and line ranges (tree-sitter, no git)."""

import pytest

from pipelines.declarations import parse_declarations
from pipelines.languages import grammar_key, language_of


def decls(source: str, key: str):
    parsed = parse_declarations(source.encode(), key)
    assert not parsed.has_error
    return [(d["kind"], d["name"], d["start_line"], d["end_line"]) for d in parsed.declarations]


def test_python_qualified_names_nested_functions_and_decorators():
    src = (
        "@decorator\n"
        "def top(a):\n"
        "    def inner():\n"
        "        return 1\n"
        "    return inner\n"
        "\n"
        "class Foo(Base):\n"
        "    @property\n"
        "    def bar(self):\n"
        "        return 2\n"
        "    class Inner:\n"
        "        def deep(self): pass\n"
    )
    assert decls(src, "python") == [
        ("function", "top", 1, 5),
        ("function", "top.inner", 3, 4),
        ("class", "Foo", 7, 12),
        ("method", "Foo.bar", 8, 10),
        ("class", "Foo.Inner", 11, 12),
        ("method", "Foo.Inner.deep", 12, 12),
    ]
    code = parse_declarations(src.encode(), "python").declarations[0]["code"]
    assert code.startswith("@decorator\ndef top(a):")


def test_rust_impl_methods_trait_impls_and_modules():
    src = (
        "struct Point<T> { x: T }\n"
        "enum E { A, B }\n"
        "trait Shape { fn area(&self) -> f64; fn name(&self) -> String { String::new() } }\n"
        "impl<T> Point<T> { pub fn new(x: T) -> Self { Point { x } } }\n"
        "impl fmt::Display for Point<i32> { fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result { Ok(()) } }\n"
        "mod tests { fn helper() {} }\n"
        "fn main() { fn nested() {} }\n"
    )
    assert [(k, n) for k, n, _, _ in decls(src, "rust")] == [
        ("struct", "Point"),
        ("enum", "E"),
        ("trait", "Shape"),
        ("method", "Shape.name"),
        ("method", "Point.new"),
        ("method", "<Point as fmt::Display>.fmt"),
        ("function", "tests.helper"),
        ("function", "main"),
        ("function", "main.nested"),
    ]


@pytest.mark.parametrize(
    "key, src, expected",
    [
        (
            "go",
            "package main\ntype S struct { a int }\ntype H interface { Serve() }\n"
            "func (s *S) Start() error { return nil }\nfunc main() {}\n",
            [("struct", "S"), ("interface", "H"), ("method", "S.Start"), ("function", "main")],
        ),
        (
            "javascript",
            "function a() {}\nclass B { constructor() {} m() { return 1; } h = () => 2; n = 3; }\n"
            "const f = () => 1;\nexport const g = function() {};\nlet x = 5;\n",
            [
                ("function", "a"),
                ("class", "B"),
                ("method", "B.constructor"),
                ("method", "B.m"),
                ("method", "B.h"),
                ("function", "f"),
                ("function", "g"),
            ],
        ),
        (
            "typescript",
            "interface I { m(): void }\nenum Color { Red }\nexport class K { private p(): number { return 1 }\n"
            "  private h = (x: number) => x; n = 1; }\nnamespace NS { export function inns() {} }\n",
            [
                ("interface", "I"),
                ("enum", "Color"),
                ("class", "K"),
                ("method", "K.p"),
                ("method", "K.h"),
                ("function", "NS.inns"),
            ],
        ),
        (
            "tsx",
            "const App = () => <div/>;\nfunction Comp() { return <span/>; }\n",
            [("function", "App"), ("function", "Comp")],
        ),
        (
            "java",
            "class A { A() {} void m() {} void m(int x) {} interface I {} enum E { X } }\n",
            [
                ("class", "A"),
                ("method", "A.A"),
                ("method", "A.m"),
                ("method", "A.m#2"),
                ("interface", "A.I"),
                ("enum", "A.E"),
            ],
        ),
        (
            "c",
            "struct point { int x; };\ntypedef struct { int y; } Vec;\nstatic int *make(int n) { return 0; }\n"
            "struct point *p;\n",
            [("struct", "point"), ("struct", "Vec"), ("function", "make")],
        ),
        (
            "cpp",
            "namespace ns {\nclass W { public: void draw() {} int size() const; };\n"
            "int W::size() const { return 1; }\n}\ntemplate <typename T> T maxv(T a, T b) { return a; }\n",
            [("class", "ns.W"), ("method", "ns.W.draw"), ("method", "ns.W.size"), ("function", "maxv")],
        ),
    ],
)
def test_other_languages(key, src, expected):
    assert [(k, n) for k, n, _, _ in decls(src, key)] == expected


def test_syntax_errors_are_reported():
    assert parse_declarations(b"def f(:\n    pass\n", "python").has_error


def test_language_by_extension():
    assert language_of("a/b.py") == "python" and language_of("x.RS") == "rust" and language_of("x.hpp") == "cpp"
    assert language_of("README.md") is None
    assert grammar_key("app.tsx", "typescript") == "tsx" and grammar_key("app.ts", "typescript") == "typescript"
