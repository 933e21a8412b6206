"""Real English text, offline: a file of one text per line, or two corpora every Python
installation carries.

- ``python-docs``: Python ships the text of its language reference (``pydoc_data.topics``,
  what ``help("if")`` prints): about 100 topics of real, edited technical English, about
  1,000 sentences (:func:`python_docs_sentences`).
- ``python-stdlib``: the docstrings of the standard library's own source files (modules,
  classes and functions; read with :mod:`ast`, nothing imported or run), about 12,000
  sentences (:func:`python_stdlib_sentences`): enough unlabeled text to distil a small
  encoder.

Both cut their text into sentences, keep those of 20 to 300 characters that are prose (not
code or tables), drop duplicates, and return them in a fixed order, so every machine with the
same Python gets the same corpus with nothing downloaded (another Python version gives a
slightly different one).
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
from functools import cache
from pathlib import Path
from pydoc_data.topics import topics

from .datasplit import DataError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")

_SKIPPED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib"})


def read_texts(path: str | os.PathLike, minimum: int = 1) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped; at least ``minimum`` of them."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; give a text file, one text per line") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}); give one text per "
                        "line in UTF-8") from None
    texts = [line.strip() for line in lines if line.strip()]
    if len(texts) < minimum:
        raise DataError(f"{path} holds {len(texts)} non-empty line(s); at least {minimum} "
                        "are needed (one text per line)")
    return texts


def corpus(texts: str | os.PathLike) -> list[str]:
    """The texts of ``texts``: a built-in corpus name (:data:`CORPORA`) or a file of one text
    per line."""
    builtin = CORPORA.get(texts) if isinstance(texts, str) else None
    return builtin() if builtin is not None else read_texts(texts)


def python_docs_sentences() -> list[str]:
    """Sentences of Python's reference documentation (see the module docstring)."""
    return _sentences(topics[name] for name in sorted(topics))


@cache
def _stdlib_sentences() -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docstrings = []
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_STDLIB_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue  # a file this Python cannot parse (e.g. a lib2to3 fixture)
        docstrings += [doc for node in ast.walk(tree)
                       if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                            ast.AsyncFunctionDef))
                       and (doc := ast.get_docstring(node))]
    return tuple(_sentences(docstrings))


def python_stdlib_sentences() -> list[str]:
    """Sentences of the standard library's docstrings (see the module docstring); parsed
    once per process (a few seconds)."""
    return list(_stdlib_sentences())


CORPORA = {"python-docs": python_docs_sentences, "python-stdlib": python_stdlib_sentences}
"""The built-in corpora, by the names ``--texts`` takes."""


def _sentences(documents) -> list[str]:
    """The prose sentences of ``documents``, deduplicated, in order."""
    seen: set[str] = set()
    sentences = []
    for document in documents:
        for paragraph in re.split(r"\n\s*\n", document):
            if paragraph.startswith((" ", "\t")) or ">>>" in paragraph:
                continue  # code blocks and examples
            text = " ".join(paragraph.split())
            for sentence in _SENTENCE_END.split(text):
                if 20 <= len(sentence) <= 300 and _is_prose(sentence) and sentence not in seen:
                    seen.add(sentence)
                    sentences.append(sentence)
    return sentences


def _is_prose(sentence: str) -> bool:
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return (sentence[0].isupper() and sentence[-1] in ".!?" and letters >= 0.85 * len(sentence)
            and "*" not in sentence and "|" not in sentence)
