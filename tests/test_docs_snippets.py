"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace (a later block may use what an earlier
one defined), in a fresh working directory, after ``torch.manual_seed(0)``. Only blocks
fenced exactly as ```python run; ```text, ```bash and the others are not code to run.
Blocks written doctest-style (``>>> `` prompts) are run without their prompts and output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Snippet:
    line: int  # 1-based line of the block's first code line in the markdown file
    code: str


def from_doctest(code: str) -> str:
    """The source of a doctest-style block: prompts stripped, output lines dropped. A
    block without ``>>>`` prompts is returned unchanged."""
    lines = code.splitlines()
    if not any(line.lstrip().startswith(">>>") for line in lines):
        return code
    source = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith((">>> ", "... ")) or stripped in (">>>", "..."):
            source.append(stripped[4:])
        else:
            source.append("")  # an output line; keep the line count for tracebacks
    return "\n".join(source) + "\n"


def python_snippets(path: Path) -> list[Snippet]:
    text = path.read_text(encoding="utf-8")
    snippets = []
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        body = "\n".join(line[indent:] for line in match["body"].splitlines()) + "\n"
        line = text.count("\n", 0, match.start("body")) + 1
        snippets.append(Snippet(line, from_doctest(body)))
    return snippets


SNIPPETS = {path: python_snippets(path) for path in DOCS}
WITH_SNIPPETS = [path for path, snippets in SNIPPETS.items() if snippets]


def test_the_readme_has_python_snippets():
    assert SNIPPETS[ROOT / "README.md"], "README.md should show the library in ```python blocks"


def test_doctest_blocks_lose_their_prompts_and_output():
    code = ">>> x = 1 + 1\n>>> for i in range(2):\n...     x += i\n>>> x\n3\n"
    namespace: dict = {}
    exec(from_doctest(code), namespace)
    assert namespace["x"] == 3
    assert from_doctest("y = 2\n") == "y = 2\n"


def test_fences_other_than_python_are_not_collected(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nls\n```\n\n```python\nx = 1\n```\n\n```text\nnot code\n```\n"
        "\n```pycon\n>>> 1\n```\n\n- item:\n\n  ```python\n  y = 2\n  ```\n"
    )
    found = python_snippets(page)
    assert [s.code for s in found] == ["x = 1\n", "y = 2\n"]
    assert [s.line for s in found] == [6, 20]


@pytest.mark.parametrize("path", WITH_SNIPPETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    for snippet in SNIPPETS[path]:
        # Compiled under the page's name and moved to its line there, a failing snippet's
        # traceback points at (and shows) the failing line of the page itself.
        code = compile(snippet.code, str(path), "exec").replace(co_firstlineno=snippet.line)
        exec(code, namespace)
