"""A synthetic but realistic Rust repository of N commits, built locally with `git fast-import` (no network).

The history looks like a growing crate: modules are added, functions and `impl` blocks are added, edited
(a changed literal, an inserted statement, a reworded log line), occasionally deleted or reformatted; a few
files get renamed; Cargo.toml / Cargo.lock / README change now and then; a merge of a short feature branch
happens every ~50 commits. Deterministic for a given seed. Used by `hybrid bench datagen --synthetic-rust N`.
With `syntax_errors` > 0 some edits write old or broken Rust (the 2015 `try!` macro, an unclosed parenthesis)
that tree-sitter recovers from, and later edits may replace those lines again (tests of partial parses).
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

WORDS = (
    "parse",
    "token",
    "buffer",
    "index",
    "cache",
    "frame",
    "route",
    "packet",
    "stream",
    "config",
    "window",
    "layer",
    "vertex",
    "queue",
    "sched",
    "block",
    "chunk",
    "entry",
    "record",
    "shard",
    "peer",
    "hash",
)


# lines a syntax-error edit writes (they start like the edited statements, so later edits may replace them)
BROKEN_STATEMENTS = ("        let tmp_{n} = try!(state.check(i, {n}));", "        acc.push((value.rotate_left({n});")


class _Crate:
    def __init__(self, rng: random.Random, syntax_errors: float = 0.0) -> None:
        self.rng = rng
        self.syntax_errors = syntax_errors
        self.files: dict[str, list[list[str]]] = {}  # path -> items, each item a list of lines
        self.counter = 0

    def name(self) -> str:
        self.counter += 1
        return f"{self.rng.choice(WORDS)}_{self.rng.choice(WORDS)}_{self.counter}"

    def statement(self) -> str:
        r, n = self.rng, self.rng.randint(1, 97)
        if self.syntax_errors and r.random() < self.syntax_errors:
            return r.choice(BROKEN_STATEMENTS).format(n=n)
        return r.choice(
            [
                f"        total = total.wrapping_add((*value as u64) * {n});",
                f"        if *value % {n} == 0 {{ continue; }}",
                f"        acc.push(value.rotate_left({n % 31}));",
                f'        log::trace!("step {{}} of {{}}", i, {n});',
                f"        let tmp_{n} = value.checked_mul({n}).unwrap_or(0);",
                f"        state.update(i, {n})?;",
            ]
        )

    def function(self, indent: str = "") -> list[str]:
        name = self.name()
        body = [self.statement() for _ in range(self.rng.randint(2, 12))]
        lines = [
            f"/// Computes the {name.replace('_', ' ')} of the input.",
            f"pub fn {name}(input: &[u32], state: &mut State) -> Result<u64, Error> {{",
            "    let mut total: u64 = 0;",
            "    let mut acc = Vec::new();",
            "    for (i, value) in input.iter().enumerate() {",
            *body,
            "    }",
            f'    log::debug!("{name}: {{}} items", acc.len());',
            "    Ok(total)",
            "}",
        ]
        return [indent + ln if ln else ln for ln in lines]

    def struct_with_impl(self) -> list[str]:
        name = "".join(w.capitalize() for w in self.name().split("_")[:2]) + str(self.counter)
        fields = [
            f"    pub {self.rng.choice(WORDS)}_{i}: u{self.rng.choice((8, 16, 32, 64))},"
            for i in range(self.rng.randint(1, 6))
        ]
        lines = ["#[derive(Debug, Clone, Default)]", f"pub struct {name} {{", *fields, "}", "", f"impl {name} {{"]
        for _ in range(self.rng.randint(1, 4)):
            lines += self.function("    ")[1:] + [""]
        lines[-1] = "}"
        return lines

    def render(self, path: str) -> str:
        header = ["use crate::error::Error;", "use crate::state::State;", ""]
        out = header[:]
        for item in self.files[path]:
            out += item + [""]
        return "\n".join(out)

    def new_file(self) -> str:
        path = f"src/{self.rng.choice(WORDS)}/{self.name()}.rs"
        self.files[path] = [self.function() for _ in range(self.rng.randint(1, 4))]
        return path

    def edit(self, path: str) -> None:
        r = self.rng
        items = self.files[path]
        action = r.random()
        if action < 0.30:
            items.insert(r.randrange(len(items) + 1), self.function() if r.random() < 0.7 else self.struct_with_impl())
        elif action < 0.38 and len(items) > 2:
            items.pop(r.randrange(len(items)))
        else:
            for _ in range(r.randint(1, 3)):  # edit statements inside a few items
                item = items[r.randrange(len(items))]
                body = [
                    i
                    for i, ln in enumerate(item)
                    if ln.lstrip().startswith(("total", "if", "acc", "log", "let tmp", "state"))
                ]
                if not body:
                    continue
                i = r.choice(body)
                indent = item[i][: len(item[i]) - len(item[i].lstrip())]
                if r.random() < 0.5:
                    item[i] = indent + self.statement().lstrip()
                else:
                    item.insert(i, indent + self.statement().lstrip())
                if r.random() < 0.05:
                    item[i] = item[i] + "  "  # trailing whitespace: a whitespace-only change


def _data(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return b"data %d\n" % len(raw) + raw + b"\n"


def build_synthetic_rust_repo(path: str | Path, commits: int, seed: int = 0, syntax_errors: float = 0.0) -> Path:
    """Create a git repository at `path` with `commits` first-parent commits of a Rust crate; `syntax_errors`:
    the share of written statements that are old or broken Rust."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    rng = random.Random(seed)
    crate = _Crate(rng, syntax_errors)
    stream = bytearray()
    ts = 1_700_000_000
    mark = 0
    main_mark = None
    cargo_deps = 1

    def commit(ref: str, parent: int | None, msg: str, ops: list[bytes], merge: int | None = None) -> int:
        nonlocal mark, ts
        mark += 1
        ts += rng.randint(60, 36_000)
        stream.extend(b"commit %s\nmark :%d\n" % (ref.encode(), mark))
        stream.extend(
            b"author Bench <bench@example.com> %d +0000\ncommitter Bench <bench@example.com> %d +0000\n" % (ts, ts)
        )
        stream.extend(_data(msg))
        if parent is not None:
            stream.extend(b"from :%d\n" % parent)
        if merge is not None:
            stream.extend(b"merge :%d\n" % merge)
        for op in ops:
            stream.extend(op)
        stream.extend(b"\n")
        return mark

    def put(p: str) -> bytes:
        return b"M 100644 inline %s\n" % p.encode() + _data(crate.render(p))

    def cargo() -> list[bytes]:
        toml = '[package]\nname = "synthetic"\nversion = "0.1.0"\n\n[dependencies]\n' + "".join(
            f'dep{i} = "1.{i}"\n' for i in range(cargo_deps)
        )
        lock = "".join(f'[[package]]\nname = "dep{i}"\nversion = "1.{i}.0"\n\n' for i in range(cargo_deps))
        return [b"M 100644 inline Cargo.toml\n" + _data(toml), b"M 100644 inline Cargo.lock\n" + _data(lock)]

    first = [crate.new_file() for _ in range(3)]
    ops = [put(p) for p in first] + cargo() + [b"M 100644 inline README.md\n" + _data("# synthetic crate\n")]
    main_mark = commit("refs/heads/main", None, "Initial import", ops)
    made = 1
    while made < commits:
        r = rng.random()
        if r < 0.02 and made + 2 <= commits:  # a short feature branch merged with --no-ff
            p = rng.choice(sorted(crate.files))
            crate.edit(p)
            feature = commit("refs/heads/feature", main_mark, f"Feature work on {p}", [put(p)])
            main_mark = commit("refs/heads/main", main_mark, "Merge branch 'feature'", [put(p)], merge=feature)
            made += 1
            continue
        touched: list[bytes] = []
        msg = "Update"
        if r < 0.10 or len(crate.files) < 5:
            p = crate.new_file()
            touched.append(put(p))
            msg = f"Add {Path(p).stem}"
        elif r < 0.12:
            old = rng.choice(sorted(crate.files))
            new = f"src/{rng.choice(WORDS)}/{Path(old).name}"
            if new not in crate.files:
                crate.files[new] = crate.files.pop(old)
                touched += [b"D %s\n" % old.encode(), put(new)]
                msg = f"Move {Path(old).name} to {Path(new).parent.name}"
        elif r < 0.15:
            cargo_deps += 1
            touched += cargo()
            msg = "Bump dependencies"
        if not touched:
            for p in rng.sample(sorted(crate.files), k=min(len(crate.files), rng.choice((1, 1, 1, 2, 2, 3, 4)))):
                crate.edit(p)
                touched.append(put(p))
            msg = f"Refine {Path(rng.choice(sorted(crate.files))).stem}"
        main_mark = commit("refs/heads/main", main_mark, msg, touched)
        made += 1
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet", "--force"], input=bytes(stream), check=True)
    subprocess.run(["git", "-C", str(path), "reset", "-q", "--hard", "main"], check=True)
    return path
