"""Every "DESIGN §x" / "DESIGN §x.y" citation in the repository names a section of docs/design.md.

Code, configs, help texts, the README, benchmarks and the reports the code writes cite the
design document by section number. A citation that names no section sends a reader nowhere,
so this test scans the repository's text files (``*.py``, ``*.md``, ``*.yaml``, ``*.txt``,
``*.proto``, ``*.toml``, Makefiles), reads every citation, including lists and ranges
("§4.2, §5.1", "§2.1/§2.2", "§5.3–5.4", "§2–§6"), and checks each against the headings of
docs/design.md (``## x.`` and ``### x.y``). It also checks that the scan finds the
citations at all, so it cannot pass on an empty scan.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.paths import REPO as ROOT

DESIGN = ROOT / "docs" / "design.md"

SUFFIXES = frozenset({".py", ".md", ".yaml", ".yml", ".txt", ".proto", ".toml", ".cfg"})
FILE_NAMES = frozenset({"Makefile"})
#: Build outputs, run directories and tool state: not the repository's text.
SKIP_DIRS = frozenset({"runs", "build", "dist", "node_modules", "__pycache__"})

_NUMBER = r"\d+(?:\.\d+)?"
_DASH = "[-–—]"
#: "DESIGN §a" followed by any number of ", §b", "/§b", " and §b", " or §b" or a range
#: "–b" / "–§b". A list item needs its own "§", so "DESIGN §2, 32 rows" reads only §2.
_CITATION = re.compile(
    rf"DESIGN\s*§\s*(?P<first>{_NUMBER})"
    rf"(?P<rest>(?:\s*(?:,|/|\band\b|\bor\b)\s*§\s*{_NUMBER}"
    rf"|\s*{_DASH}\s*§?\s*{_NUMBER})*)"
)
_ITEM = re.compile(rf"(?P<sep>,|/|\band\b|\bor\b|{_DASH})\s*§?\s*(?P<num>{_NUMBER})")
_TOP_HEADING = re.compile(r"^## (\d+)\.\s")
_SUB_HEADING = re.compile(r"^### (\d+\.\d+)\s")


def cited_sections(text: str) -> list[str]:
    """The section numbers cited in ``text``, in order; a range "§a–§b" of whole sections
    is expanded to every section from a to b, a range of subsections to its two ends."""
    out: list[str] = []
    for match in _CITATION.finditer(text):
        out.append(match["first"])
        for item in _ITEM.finditer(match["rest"]):
            num, prev = item["num"], out[-1]
            if re.fullmatch(_DASH, item["sep"]) and "." not in num and "." not in prev:
                out.extend(str(k) for k in range(int(prev) + 1, int(num) + 1))
            else:
                out.append(num)
    return out


def design_sections(text: str) -> tuple[set[str], set[str]]:
    """(top-level numbers, subsection numbers) of the headings of a design document."""
    top, sub = set(), set()
    for line in text.splitlines():
        if m := _TOP_HEADING.match(line):
            top.add(m[1])
        elif m := _SUB_HEADING.match(line):
            sub.add(m[1])
    return top, sub


def unresolved(sections: list[str], top: set[str], sub: set[str]) -> list[str]:
    """The cited numbers that name no heading."""
    return [s for s in sections if s not in (sub if "." in s else top)]


def repository_text_files(root: Path) -> Iterator[Path]:
    """Every text file of the repository the scan covers (module docstring)."""
    for path in sorted(root.iterdir()):
        if path.is_dir():
            if path.name.startswith(".") or path.name in SKIP_DIRS \
                    or path.name.endswith(".egg-info"):
                continue
            yield from repository_text_files(path)
        elif path.suffix in SUFFIXES or path.name in FILE_NAMES:
            yield path


def all_citations() -> list[tuple[str, int, str]]:
    """(file relative to the root, line number, cited section) for every citation."""
    found = []
    for path in repository_text_files(ROOT):
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), start=1):
            for section in cited_sections(line):
                found.append((str(path.relative_to(ROOT)), lineno, section))
    return found


@pytest.fixture(scope="module")
def headings() -> tuple[set[str], set[str]]:
    assert DESIGN.is_file(), f"{DESIGN} is missing: the code cites it as DESIGN §x"
    return design_sections(DESIGN.read_text(encoding="utf-8"))


def test_every_design_citation_names_a_section(headings: tuple[set[str], set[str]]) -> None:
    citations = all_citations()
    files = {f for f, _, _ in citations}
    # The code, configs and docs cite the design document a few hundred times; far fewer
    # means the scan went wrong (wrong root, a parser that stopped matching), not that the
    # citations are gone.
    assert len(citations) > 100, f"found only {len(citations)} citations in {len(files)} files"
    assert len(files) > 40, f"citations found in only {len(files)} files: {sorted(files)}"
    top, sub = headings
    broken = [f"{f}:{n}: §{s}" for f, n, s in citations if unresolved([s], top, sub)]
    assert not broken, ("citations of sections docs/design.md does not have:\n"
                        + "\n".join(broken))


def test_headings_are_unique_and_nested() -> None:
    """Each number is one heading, and every ``### x.y`` sits under its ``## x.``."""
    current, seen = None, []
    for line in DESIGN.read_text(encoding="utf-8").splitlines():
        if m := _TOP_HEADING.match(line):
            current = m[1]
            seen.append(current)
        elif m := _SUB_HEADING.match(line):
            assert m[1].split(".")[0] == current, f"### {m[1]} is not under ## {m[1].split('.')[0]}."
            seen.append(m[1])
    duplicates = sorted({s for s in seen if seen.count(s) > 1})
    assert not duplicates, f"headings numbered twice: {duplicates}"
    assert {"1", "2", "3", "4", "5", "6", "7", "8"} <= set(seen)


# The citations below are assembled at run time so that this file does not cite anything.
D = "DESIGN"


@pytest.mark.parametrize(("text", "sections"), [
    (f"({D} §2.1)", ["2.1"]),
    (f"{D} §6.", ["6"]),
    (f"{D} §4.2, §5.1).", ["4.2", "5.1"]),
    (f"({D} §4.1, §4.2, §5.1 distributed noise)", ["4.1", "4.2", "5.1"]),
    (f"{D} §2.1/§2.2 literally", ["2.1", "2.2"]),
    (f"{D} §5.3–5.4. The gRPC", ["5.3", "5.4"]),
    (f"It follows {D} §2–§6; section", ["2", "3", "4", "5", "6"]),
    (f"from {D} §8.1's notes", ["8.1"]),
    (f"{D} §4 table, §4.3", ["4"]),
    (f"{D} §2, 32 rows", ["2"]),
    (f"{D}§7 and §8", ["7", "8"]),
    ("§2.1 without the document's name", []),
])
def test_citation_forms_are_read(text: str, sections: list[str]) -> None:
    assert cited_sections(text) == sections


def test_a_citation_of_a_missing_section_is_reported(
        headings: tuple[set[str], set[str]]) -> None:
    top, sub = headings
    cited = cited_sections(f"see {D} §99 and {D} §2.9, §4.2")
    assert unresolved(cited, top, sub) == ["99", "2.9"]
