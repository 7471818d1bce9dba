"""What users read is what the files show: the README's headline table, the results index and the figures
inside docs/ are generated from the committed result files (benchmarks/report.py), and no other result figure
is written by hand in the README or docs/."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
pytestmark = pytest.mark.skipif(not (RESULTS / "route_free").is_dir(), reason="the committed benchmark results")


def _report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_headline_table_is_what_the_result_files_give():
    report = _report()
    text = (ROOT / "README.md").read_text()
    start, end = text.index(report.README_START) + len(report.README_START), text.index(report.README_END)
    assert text[start:end].strip() == report.readme_headlines(), "run: python benchmarks/report.py readme"


def test_results_index_is_generated():
    report = _report()
    assert (RESULTS / "README.md").read_text() == report.results_index(), "run: python benchmarks/report.py index"


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_generated_blocks_are_what_the_result_files_give(doc):
    text = doc.read_text()
    assert _report().doc_blocks(text) == text, "run: python benchmarks/report.py docs"


# numbers in prose that are settings, thresholds, versions or status codes, not measured results
NOT_RESULTS = {
    "how-it-works.md": {"0.01", "0.1", "0.25", "10%", "2/3", "4 of 6"},
    "overlap.md": {"0.5%", "1%", "2%", "100%", "19.0%", "21.0%"},  # thresholds; the two in the example warning line
    "serving.md": {"502/503"},
    "sharing.md": {"2%"},
}


@pytest.mark.parametrize("doc", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_no_hand_written_result_figures(doc):
    """Outside code, links and generated blocks, a decimal, a percentage, an "N of M" or a ratio is a setting
    listed above or it is not there: measured figures come from generated blocks or live in the results."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    text = re.sub(r"<!-- (generated|headline).*?<!-- end.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    found = re.findall(r"(?<![\w.])(\d+(?:\.\d+)+%?|\d+%|\d+(?:,\d{3})* of \d+(?:,\d{3})*|\d+/\d+|\d+(?:\.\d+)?[x×])"
                       r"(?![\w.])", text)
    versions = {n for n in found if re.fullmatch(r"\d+\.\d+\.\d+", n)}
    assert set(found) - versions <= NOT_RESULTS.get(doc.name, set())


def test_readme_is_a_short_first_read():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    assert not re.search(r"\bissue \d+|#\d{2}\b", text, flags=re.I)  # no issue numbers in what users read
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link
