"""docs/contract.md defines every contract code the code base cites, and names only test files that exist.

Source, docs and README cite properties by code ("contract S4"); a code nobody defines, or a
definition whose tests were moved away, is a promise nobody can check.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "contract.md"
CITED = re.compile(r"\bS\d{1,2}\b")
DEFINED = re.compile(r"^## (S\d{1,2}) ", re.MULTILINE)
NAMED_TEST = re.compile(r"`(tests/[\w/.-]+\.py)`")


def _defined() -> set[str]:
    return set(DEFINED.findall(CONTRACT.read_text()))


def _citations(paths: list[Path], root: Path = ROOT) -> dict[str, list[str]]:
    """Code to the places (``path:line``, relative to ``root``) that cite it."""
    found: dict[str, list[str]] = {}
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for code in CITED.findall(line):
                found.setdefault(code, []).append(f"{path.relative_to(root)}:{number}")
    return found


def _sections() -> dict[str, str]:
    """Each defined code to the text of its section."""
    text = CONTRACT.read_text()
    starts = [(m.group(1), m.start()) for m in DEFINED.finditer(text)]
    ends = [start for _, start in starts[1:]] + [text.index("\n## ", starts[-1][1] + 1)]
    return {code: text[start:end] for (code, start), end in zip(starts, ends)}


def test_every_code_cited_in_src_docs_and_readme_is_defined_in_the_contract():
    sources = [*sorted((ROOT / "src").rglob("*.py")), ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    undefined = {code: where for code, where in _citations(sources).items() if code not in _defined()}
    assert not undefined, (
        f"docs/contract.md defines {sorted(_defined(), key=lambda code: int(code[1:]))}, but these codes are cited too: {undefined}; "
        "define each in docs/contract.md (a '## S<n> Name' section naming its tests) or fix the citation"
    )


def test_every_test_file_the_contract_names_exists():
    named = set(NAMED_TEST.findall(CONTRACT.read_text()))
    assert named, "docs/contract.md names no test file"
    gone = sorted(path for path in named if not (ROOT / path).is_file())
    assert not gone, f"docs/contract.md names test files that do not exist: {gone}; point it at where they moved"


def test_the_contract_defines_s1_to_s14_each_with_the_tests_that_hold_it():
    sections = _sections()
    assert list(sections) == [f"S{n}" for n in range(1, 15)]
    untested = [code for code, text in sections.items() if not NAMED_TEST.search(text)]
    assert not untested, f"these properties name no test file: {untested}"


def test_a_citation_of_an_undefined_code_is_found(tmp_path):
    source = tmp_path / "module.py"
    source.write_text('"""Holds contract S4 (and S15, which nobody defined)."""\nx = "S3x"\n')
    cited = _citations([source], root=tmp_path)
    assert cited == {"S4": ["module.py:1"], "S15": ["module.py:1"]}
    assert "S4" in _defined() and "S15" not in _defined()
