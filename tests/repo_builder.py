"""Build real git repositories with known histories for tests (the `git` command, deterministic dates).

    from tests.repo_builder import RepoBuilder, build_sample_repo

    rb = RepoBuilder(tmp_path / "repo")
    rb.write("a.py", "def f():\\n    return 1\\n")
    h0 = rb.commit("add f")
    rb.write("a.py", "def f():\\n    return 2\\n")
    h1 = rb.commit("change f")

`build_sample_repo(path)` makes the eight-language history the pipeline tests use (see SAMPLE_HISTORY).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class RepoBuilder:
    """A non-bare repository in `path` on branch `main`; every commit gets the next fixed date."""

    def __init__(self, path: str | os.PathLike, branch: str = "main") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._tick = 0
        self.git("init", "-q", "-b", branch)
        self.git("config", "user.name", "Test Author")
        self.git("config", "user.email", "test@example.com")
        self.git("config", "commit.gpgsign", "false")

    def git(self, *args: str) -> str:
        env = {
            **os.environ,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_SYSTEM": os.devnull,
            "GIT_AUTHOR_DATE": self._date(),
            "GIT_COMMITTER_DATE": self._date(),
        }
        out = subprocess.run(["git", *args], cwd=self.path, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout.strip()

    def _date(self) -> str:
        return f"2026-01-01T00:{self._tick // 60:02d}:{self._tick % 60:02d}+00:00"

    def write(self, rel: str, content: str | bytes) -> None:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")

    def delete(self, rel: str) -> None:
        self.git("rm", "-q", rel)

    def rename(self, old: str, new: str) -> None:
        (self.path / new).parent.mkdir(parents=True, exist_ok=True)
        self.git("mv", old, new)

    def commit(self, message: str) -> str:
        self._tick += 1
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def branch(self, name: str, start: str = "HEAD") -> None:
        self.git("branch", name, start)

    def checkout(self, name: str) -> None:
        self.git("checkout", "-q", name)

    def merge(self, name: str, message: str) -> str:
        self._tick += 1
        self.git("merge", "-q", "--no-ff", "-m", message, name)
        return self.head()


# -- the sample history ------------------------------------------------------------------------------------------
APP_V0 = """import os


def old():
    return 0


class Parser:
    @staticmethod
    def parse(text):
        tokens = text.split()
        return tokens

    def reset(self):
        self.pos = 0
"""
APP_V2 = """import os


class Parser:
    @staticmethod
    def parse(text):
        tokens = text.split(",")
        return tokens

    def reset(self):
        self.pos = 0


def helper(x):
    return x * 2
"""
TOOLS_PY = """import functools


@functools.lru_cache(maxsize=None)
def outer(n):
    def inner(k):
        return k + n
    return inner(1)
"""
MAIN_RS_V0 = """struct Point {
    x: i32,
}

impl Point {
    fn norm(&self) -> i32 {
        self.x
    }
}

fn run(x: i32) -> i32 {
    x + 1
}

fn main() {
    println!("{}", run(1));
}
"""
MAIN_RS_V2 = MAIN_RS_V0.replace("    x + 1\n", "    x  +  1\n")  # whitespace only
SERVER_GO_V0 = """package main

type Server struct {
	addr string
}

func (s *Server) Start() error {
	return nil
}

func (s *Server) Stop() {
	s.addr = ""
}

func main() {
	s := &Server{addr: ":8080"}
	s.Start()
}
"""
SERVER_GO_V3 = SERVER_GO_V0.replace("\treturn nil\n", "\treturn listen(s.addr)\n")
UTIL_JS = """function total(items) {
  return items.reduce((acc, x) => acc + x, 0);
}

class Cart {
  add(item) {
    this.items.push(item);
  }
}

const double = (x) => x * 2;
"""
TYPES_TS = """export interface Shape {
  area(): number;
}

export enum Color {
  Red,
  Green,
}

export class Circle implements Shape {
  constructor(private r: number) {}
  area(): number {
    return 3.14 * this.r * this.r;
  }
}
"""
MAIN_JAVA_V1 = """package demo;

public class Main {
    public static void main(String[] args) {
        System.out.println(greet("x"));
    }

    static String greet(String name) {
        return "hi " + name;
    }
}
"""
MAIN_JAVA_V5 = MAIN_JAVA_V1.replace(
    """        return "hi " + name;
    }
""",
    """        return "hi " + name;
    }

    static String farewell(String name) {
        return "bye " + name;
    }
""",
)
VEC_C_V1 = """#include <stdlib.h>

struct vec {
    int *data;
    int len;
};

int vec_len(struct vec *v) {
    return v->len;
}

int clamp(int v) {
    if (v > 10)
        return 10;
    return v;
}
"""
VEC_C_FEATURE = VEC_C_V1.replace("    if (v > 10)\n", "    if (v >= 10)\n")
WIDGET_CPP = """namespace ui {
class Widget {
public:
    void draw() {}
    int size() const;
};

int Widget::size() const {
    return 1;
}
}
"""
BINARY = bytes(range(256)) * 4  # has NUL bytes
HUGE_PY = "x = 1\n" * 100_000  # 600,000 bytes: over the default max_file_bytes (524,288)

# commit number -> (message, what it does); the merged feature commit is not in the first-parent history
SAMPLE_HISTORY = {
    0: "python, rust, go, a README and a binary logo",
    1: "javascript, typescript, java, c, c++ and nested/decorated python",
    2: "python edits (modify, add, delete) and a whitespace-only rust change",
    3: "rename server.go -> cmd/server.go with an edited method",
    4: "files the filters drop: syntax error, huge, generated, vendored, lock, minified, binary, non-UTF-8",
    5: "java: add a method (main branch)",
    6: "merge of branch feature (edits clamp in lib/vec.c)",
    7: "delete web/types.ts",
}


def build_sample_repo(path: str | os.PathLike) -> dict[int, str]:
    """Build the sample history in `path`; returns {commit number: hash} of the first-parent history."""
    rb = RepoBuilder(path)
    h = {}
    rb.write("app.py", APP_V0)
    rb.write("src/main.rs", MAIN_RS_V0)
    rb.write("server.go", SERVER_GO_V0)
    rb.write("README.md", "# sample\n")
    rb.write("logo.png", BINARY)
    h[0] = rb.commit("Initial commit: python, rust, go")
    rb.write("web/util.js", UTIL_JS)
    rb.write("web/types.ts", TYPES_TS)
    rb.write("src/Main.java", MAIN_JAVA_V1)
    rb.write("lib/vec.c", VEC_C_V1)
    rb.write("lib/widget.cpp", WIDGET_CPP)
    rb.write("tools.py", TOOLS_PY)
    h[1] = rb.commit("Add web, java, c and c++ code")
    rb.write("app.py", APP_V2)
    rb.write("src/main.rs", MAIN_RS_V2)
    h[2] = rb.commit("Split on commas; add helper; drop old")
    rb.rename("server.go", "cmd/server.go")
    rb.write("cmd/server.go", SERVER_GO_V3)
    h[3] = rb.commit("Move the server under cmd/ and listen on start")
    rb.write("broken.py", "def broken(:\n    pass\n")
    rb.write("big.py", HUGE_PY)
    rb.write("gen_pb.py", "# Generated by the protocol buffer compiler.  DO NOT EDIT!\n\ndef f():\n    pass\n")
    rb.write("vendor/lib.js", "function vendored() {}\n")
    rb.write("Cargo.lock", '# lock\n[[package]]\nname = "x"\n')
    rb.write("web/min.js", "var a=1;" * 300 + "\n")
    rb.write("data.bin", BINARY)
    rb.write("latin1.py", b"# caf\xe9\ndef f():\n    pass\n")
    h[4] = rb.commit("Add files the filters drop")
    rb.branch("feature")
    rb.write("src/Main.java", MAIN_JAVA_V5)
    h[5] = rb.commit("Add farewell")
    rb.checkout("feature")
    rb.write("lib/vec.c", VEC_C_FEATURE)
    rb.commit("Clamp at ten inclusive")
    rb.checkout("main")
    h[6] = rb.merge("feature", "Merge branch 'feature'")
    rb.delete("web/types.ts")
    h[7] = rb.commit("Remove the TypeScript types")
    return h
