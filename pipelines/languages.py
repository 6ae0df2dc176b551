"""Which files are source code in which language, and the tree-sitter parsers for them.

Light to import: the grammars are loaded on first use (`get_parser`)."""

from __future__ import annotations

import functools
from pathlib import PurePosixPath

LANGUAGES = ("python", "rust", "go", "javascript", "typescript", "java", "c", "cpp")

EXTENSIONS = {
    ".py": "python",
    ".pyi": "python",
    ".rs": "rust",
    ".go": "go",
    ".js": "javascript",
    ".jsx": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".c++": "cpp",
}


@functools.lru_cache(maxsize=1 << 16)  # the same paths come back in every commit that touches them
def language_of(path: str) -> str | None:
    """The language of a file by its extension, or None when it is not one of the eight."""
    return EXTENSIONS.get(PurePosixPath(path).suffix.lower())


def grammar_key(path: str, language: str) -> str:
    """TypeScript has two grammars: `.tsx` files need the TSX one."""
    return "tsx" if language == "typescript" and path.lower().endswith(".tsx") else language


@functools.cache
def get_language(key: str):
    import tree_sitter

    if key == "python":
        import tree_sitter_python as m

        ptr = m.language()  # noqa: E702
    elif key == "rust":
        import tree_sitter_rust as m

        ptr = m.language()  # noqa: E702
    elif key == "go":
        import tree_sitter_go as m

        ptr = m.language()  # noqa: E702
    elif key == "javascript":
        import tree_sitter_javascript as m

        ptr = m.language()  # noqa: E702
    elif key == "typescript":
        import tree_sitter_typescript as m

        ptr = m.language_typescript()  # noqa: E702
    elif key == "tsx":
        import tree_sitter_typescript as m

        ptr = m.language_tsx()  # noqa: E702
    elif key == "java":
        import tree_sitter_java as m

        ptr = m.language()  # noqa: E702
    elif key == "c":
        import tree_sitter_c as m

        ptr = m.language()  # noqa: E702
    elif key == "cpp":
        import tree_sitter_cpp as m

        ptr = m.language()  # noqa: E702
    else:
        raise KeyError(key)
    return tree_sitter.Language(ptr)


@functools.cache
def get_parser(key: str):
    import tree_sitter

    return tree_sitter.Parser(get_language(key))
