"""Code → docs: every place in ``src/`` that cites a document names a file of ``docs/`` and, when
it quotes section titles (``docs/backprop.md, "Linear"``), headings that file has. The other
direction (each section of docs/backprop.md names its code and test) is checked in
tests/test_gradcheck.py. docs/architecture.md names only paths that exist under ``src/mlplab``.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "mlplab"
DOCS = REPO / "docs"

CITATION = re.compile(r"docs/([\w./-]+?\.md)")
# after the file: an optional comma, then one or more quoted titles separated by commas or "and";
# a title starts with a non-blank character and holds no quote, brace or backslash (those are code)
FIRST_TITLE = re.compile(r'\s*,?\s*"([^"\s{}\\][^"{}\\]*)"')
NEXT_TITLE = re.compile(r'\s*(?:,|and)\s*"([^"\s{}\\][^"{}\\]*)"')


def headings(markdown: str) -> set[str]:
    """The titles of a Markdown file's headings (outside fenced code), with and without backticks."""
    found, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match:
            found.update({match.group(1), match.group(1).replace("`", "")})
    return found


def flowing_text(source: str, start: int) -> str:
    """The next few lines after ``start`` as one line: indentation and comment marks dropped, so
    that a title wrapped onto the next line of a docstring or comment reads as written."""
    lines = source[start:start + 600].splitlines()
    if not lines:
        return ""
    return " ".join([lines[0], *(re.sub(r"^\s*#?\s*", "", line) for line in lines[1:])])


def citations(source: str) -> list[tuple[int, str, list[str]]]:
    """(line, document, quoted titles) for each ``docs/NAME.md`` in ``source``."""
    found = []
    for match in CITATION.finditer(source):
        text = flowing_text(source, match.end())
        titles = []
        title = FIRST_TITLE.match(text)
        while title:
            titles.append(title.group(1))
            text = text[title.end():]
            title = NEXT_TITLE.match(text)
        found.append((source.count("\n", 0, match.start()) + 1, match.group(1), titles))
    return found


def stale_citations(root: Path, docs: Path) -> list[str]:
    stale = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".toml") and p.is_file()):
        where = path.relative_to(root.parent.parent) if root.parent.parent in path.parents else path
        for line, document, titles in citations(path.read_text(encoding="utf-8")):
            target = docs / document
            if not target.is_file():
                stale.append(f"{where}:{line}: docs/{document} does not exist")
                continue
            known = headings(target.read_text(encoding="utf-8"))
            stale += [f'{where}:{line}: docs/{document} has no heading "{t}"' for t in titles if t not in known]
    return stale


def test_the_citation_reader_finds_titles_as_they_are_written():
    source = '''"""Containers (docs/backprop.md, "Residual connections", "Sequential and the whole MLP")."""
    # -- the R-operator: docs/hessian.md, "Hessian–vector products: the R-operator" ----
    """The verdict (docs/hessian.md,
    "The verdict")."""
    # fused (docs/backprop.md "Softmax and cross-entropy"): fewer passes
    message = (f"Derived in docs/backprop.md, "
               f"section \\"{m.section}\\".")
    see docs/sweeps.md.
    '''
    assert citations(source) == [
        (1, "backprop.md", ["Residual connections", "Sequential and the whole MLP"]),
        (2, "hessian.md", ["Hessian–vector products: the R-operator"]),
        (3, "hessian.md", ["The verdict"]),
        (5, "backprop.md", ["Softmax and cross-entropy"]),
        (6, "backprop.md", []),
        (8, "sweeps.md", []),
    ]
    assert headings("# Top\n```bash\n# a comment\n```\n### `mlplab hessian`: curvature ##\n") == {
        "Top", "`mlplab hessian`: curvature", "mlplab hessian: curvature"}


def test_stale_citations_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n## Linear\n")
    code = tmp_path / "src" / "pkg"
    code.mkdir(parents=True)
    (code / "m.py").write_text('"""(docs/a.md, "Linear")\n(docs/a.md, "Residual blocks")\n(docs/b.md)"""\n')
    assert stale_citations(code, tmp_path / "docs") == [
        'src/pkg/m.py:2: docs/a.md has no heading "Residual blocks"',
        "src/pkg/m.py:3: docs/b.md does not exist",
    ]


def test_every_docs_citation_in_src_is_real():
    found = [c for p in SRC.rglob("*.py") for c in citations(p.read_text(encoding="utf-8"))]
    assert len(found) >= 20 and sum(bool(titles) for _, _, titles in found) >= 10  # the reader still reads them
    stale = stale_citations(SRC, DOCS)
    assert not stale, "stale references to docs/ in src/:\n" + "\n".join(stale)


# -- docs/architecture.md names only what exists -------------------------------------------------

ARCHITECTURE = DOCS / "architecture.md"
# an inline-code path of the package: `nn/linear.py`, `training/`, `cli.py`, `src/mlplab/fast/`
PACKAGE_PATH = re.compile(r"`((?:src/mlplab/)?(?:[\w-]+/)*(?:[\w-]+\.(?:py|toml)|[\w-]+/))`")


def architecture_paths(markdown: str) -> list[str]:
    """The package paths named in inline code outside fenced blocks (the fenced "before" layout
    lists files that no longer exist, on purpose)."""
    paths, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            paths += [m.group(1).removeprefix("src/mlplab/") for m in PACKAGE_PATH.finditer(line)]
    return paths


def test_architecture_names_only_existing_paths():
    paths = architecture_paths(ARCHITECTURE.read_text(encoding="utf-8"))
    assert len(paths) >= 30  # the layers, the rooms and the recipes all name files
    missing = sorted({p for p in paths if not (SRC / p).exists() and not (REPO / p).exists()})
    assert not missing, "docs/architecture.md names paths that do not exist: " + ", ".join(missing)


def test_architecture_path_reader():
    text = "`nn/linear.py` and `training/`, `src/mlplab/cli.py`, `mlplab train`\n```\nsweep.py 1276\n`old.py`\n```\n"
    assert architecture_paths(text) == ["nn/linear.py", "training/", "cli.py"]
