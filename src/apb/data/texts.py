"""Real English text, offline: a file of one text per line, or the sentences of Python's own
reference documentation.

Python ships the text of its language reference with every installation
(``pydoc_data.topics``, what ``help("if")`` prints): about 100 topics of real, edited
technical English. :func:`python_docs_sentences` cuts it into sentences, keeps those of
20 to 300 characters that are prose (not code or tables), drops duplicates, and returns them
in a fixed order, so every machine gets the same corpus with nothing downloaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from pydoc_data.topics import topics

from .datasplit import DataError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


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


def python_docs_sentences() -> list[str]:
    """Sentences of Python's reference documentation (see the module docstring)."""
    seen: set[str] = set()
    sentences = []
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
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
