"""The method document: every `docs/method.md §N` citation names one of its sections, and no
citation of the internal SPEC document (not in the repository) is left. Fast, no models."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "method.md"
# Where citations live: the package, the entry points, the configs, the tests, the top-level docs.
CITING_FOLDERS = ("editspecialists", "scripts", "config", "tests", "docs")
CITING_FILES = ("README.md", "BENCHMARKS.md")
SUFFIXES = {".py", ".md", ".sh"}

SECTION_HEADING = re.compile(r"^## §(\d+) \S", re.MULTILINE)
# `docs/method.md §4`, `§7–§9` (a range), `§8 / §11`, `§8 and §11`, `§2, §3`; a line break may
# fall anywhere a space may.
CITATION = re.compile(r"docs/method\.md\s+(§\d+(?:\s*(?:–|-|/|,|and)\s*§\d+)*)")
RANGE = re.compile(r"§(\d+)\s*[–-]\s*§(\d+)")
NUMBER = re.compile(r"§(\d+)")
OLD_CITATION = re.compile(r"\bSPEC\s+§")


def citing_files() -> list[Path]:
    files = [REPO / name for name in CITING_FILES]
    for folder in CITING_FOLDERS:
        files.extend(path for path in sorted((REPO / folder).rglob("*")) if path.suffix in SUFFIXES)
    return [path for path in files if path.is_file()]


def sections() -> list[int]:
    """The §-numbers of the document's section headings, in order."""
    return [int(number) for number in SECTION_HEADING.findall(METHOD.read_text(encoding="utf-8"))]


def cited_sections(text: str) -> list[int]:
    """Every section number a text cites as `docs/method.md §…` (ranges expanded)."""
    cited = []
    for group in CITATION.findall(text):
        for start, end in RANGE.findall(group):
            cited.extend(range(int(start), int(end) + 1))
        cited.extend(int(number) for number in NUMBER.findall(group))
    return cited


def test_sections_are_numbered_one_to_n_in_order():
    numbers = sections()
    assert numbers == list(range(1, len(numbers) + 1)), f"section headings ## §N, in order: {numbers}"
    assert len(numbers) >= 12  # the numbering the code's citations were written against


def test_every_citation_names_an_existing_section():
    known = set(sections())
    dangling, count = [], 0
    for path in citing_files():
        text = path.read_text(encoding="utf-8")
        cited = cited_sections(text)
        count += len(cited)
        dangling += [f"{path.relative_to(REPO)}: §{n}" for n in cited if n not in known]
    assert count > 0, "no citation of docs/method.md found: the pattern or the file list is wrong"
    assert not dangling, f"citations of sections docs/method.md does not have: {dangling}"


def test_no_citation_of_the_internal_spec_is_left():
    left = [f"{path.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}"
            for path in citing_files()
            for text in [path.read_text(encoding="utf-8")]
            for match in OLD_CITATION.finditer(text)]
    assert not left, f"cite docs/method.md instead of the internal SPEC document: {left}"


def test_citation_pattern_reads_every_form():
    assert cited_sections("(docs/method.md §7–§9)") == [7, 8, 9, 7, 9]
    assert cited_sections("docs/method.md §8 / §11 and docs/method.md §2, §3") == [8, 11, 2, 3]
    assert cited_sections("docs/method.md §8 and §11") == [8, 11]
    assert cited_sections("key by key\n(docs/method.md\n§11)") == [11]
    assert cited_sections("docs/method.md §N") == []
