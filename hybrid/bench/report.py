"""What a bench writes besides its numbers: `--from-json` reads a result a run wrote with `--json`; `--write-docs`
replaces the generated block between a pair of markers in README.md and the bench's page (read back by the tests that
check the docs carry the committed results); `--plot` saves its figure."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hybrid.core.errors import HybridError
from hybrid.core.io import atomic_write_text


def load_result(path: str, command: str, needs: Callable[[dict], object]) -> dict:
    """A result `hybrid bench COMMAND --json` wrote; `needs` reads the keys a report needs (a missing one, a file that
    is not JSON or not there: one line naming the file)."""
    try:
        result = json.loads(Path(path).read_text())
        needs(result)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HybridError(f"{path}: not a `hybrid bench {command} --json` result ({type(e).__name__}: {e})") from None
    return result


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A GitHub markdown table: the first `text_columns` columns left-aligned, the rest (numbers) right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def save_figure(fig, path: str, dpi: int) -> None:
    """A matplotlib figure written to `path` whole (a hidden temp file beside it, then a rename), then closed."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)


@dataclass(frozen=True)
class DocTable:
    """The block between `<!-- NAME:start (generated: COMMAND) -->` and `<!-- NAME:end -->` in each of `files`."""

    name: str  # e.g. recall-table
    command: str  # what regenerates it, shown in the start marker
    files: dict[str, bool]  # file (relative to the repository root): the full report (else the main table)

    @property
    def start(self) -> str:
        return f"<!-- {self.name}:start (generated: {self.command}) -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.name}:end -->"

    def write(self, report: Callable[[bool], str], root: Path = Path(".")) -> list[Path]:
        """Replace the block of every file with `report(full)`; a file without both markers is an error."""
        done = []
        for name, full in self.files.items():
            path = root / name
            text = path.read_text()
            if self.start not in text or self.end not in text:
                raise HybridError(f"{path}: no {self.name} markers ({self.start} … {self.end})")
            head, rest = text.split(self.start, 1)
            _, tail = rest.split(self.end, 1)
            atomic_write_text(path, f"{head}{self.start}\n{report(full)}{self.end}{tail}")
            done.append(path)
        return done

    def block(self, path: Path) -> str | None:
        """The text between a file's markers (None without them)."""
        text = path.read_text()
        if self.start not in text:
            return None
        return text.split(self.start, 1)[1].split(self.end, 1)[0].lstrip("\n")
