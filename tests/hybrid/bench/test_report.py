"""The benches' generated tables in README.md and their pages (hybrid/bench/report.py), on copies of the real
docs: regenerating them from the committed results changes no byte, and a file without markers is refused."""

import shutil
from pathlib import Path

import pytest

from hybrid.bench import code_memory, recall
from hybrid.bench.report import DocTable, markdown_table, save_figure
from hybrid.core.errors import HybridError

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "bench, results", [(recall, "docs/recall-results.json"), (code_memory, "docs/code-memory-results.json")]
)
def test_write_docs_from_the_committed_results_changes_no_byte(bench, results, tmp_path):
    (tmp_path / "docs").mkdir()
    for name in bench.DOCS.files:
        shutil.copy(ROOT / name, tmp_path / name)
    written = bench.write_docs(bench._load_result(str(ROOT / results)), tmp_path)
    assert written == [tmp_path / name for name in bench.DOCS.files]
    for name in bench.DOCS.files:
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), name


def test_a_new_block_replaces_only_what_is_between_the_markers(tmp_path):
    table = DocTable("t-table", "make it", {"a.md": False, "b.md": True})
    for name in table.files:
        (tmp_path / name).write_text(f"intro\n{table.start}\nold\nrows\n{table.end}\noutro\n")
    table.write(lambda full: "full\n" if full else "main\n", tmp_path)
    assert (tmp_path / "a.md").read_text() == (
        "intro\n<!-- t-table:start (generated: make it) -->\nmain\n<!-- t-table:end -->\noutro\n"
    )
    assert table.block(tmp_path / "b.md") == "full\n"


def test_a_file_without_both_markers_is_a_one_line_error_and_is_left_alone(tmp_path):
    table = DocTable("t-table", "make it", {"a.md": False})
    (tmp_path / "a.md").write_text(f"intro\n{table.start}\nno end\n")
    with pytest.raises(HybridError, match=r"a\.md: no t-table markers") as e:
        table.write(lambda full: "new\n", tmp_path)
    assert "\n" not in str(e.value)
    assert (tmp_path / "a.md").read_text() == f"intro\n{table.start}\nno end\n"


def test_markdown_table_aligns_text_columns_left_and_numbers_right():
    assert (
        markdown_table(["a", "b", "c"], [["x", "y", "1"]], text_columns=2)
        == "| a | b | c |\n|---|---|---:|\n| x | y | 1 |\n"
    )
    assert markdown_table(["a", "n"], []) == "| a | n |\n|---|---:|\n"


def test_a_result_that_is_not_a_bench_result_is_a_one_line_error_naming_the_file(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text('{"settings": {}}')
    with pytest.raises(HybridError, match=r"r\.json: not a `hybrid bench recall --json` result \(KeyError: 'variants'"):
        recall._load_result(str(bad))
    with pytest.raises(HybridError, match=r"nothing\.json: not a `hybrid bench code-memory --json` result"):
        code_memory._load_result(str(tmp_path / "nothing.json"))


def test_save_figure_writes_the_png_whole_and_leaves_no_temp_file(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, str(tmp_path / "out" / "plot.png"), dpi=50)
    assert (tmp_path / "out" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["plot.png"]
    assert not plt.fignum_exists(fig.number)
