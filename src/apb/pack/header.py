"""The packed file's header: what marks a safetensors file as an apb packed model, and
its metadata read and checked before any tensor is (docs/design.md §4).

A safetensors file starts with the length of its JSON header (8 bytes, little-endian),
then the header: the tensor table and ``__metadata__``, whose ``format``,
``format_version``, ``layers`` and the optional ``architecture`` and ``tied`` entries
:func:`packed_header`, :func:`parse_metadata` and :func:`parse_tied` check, naming the file
and the layer in every error.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load

from .layer_tensors import validate_layer_config

FORMAT = "apb-packed"
FORMAT_VERSION = 1
HEADER_PREFIX_BYTES = 8


class PackedFormatError(ValueError):
    """A packed model file is missing, truncated, corrupt, not ours, or does not fit the
    architecture it names; the message says which and what was expected."""


@dataclass(frozen=True)
class PackedFileInfo:
    """Sizes of a packed file: ``model_bytes = file_bytes − header_bytes``."""

    file_bytes: int
    header_bytes: int  # the 8-byte length prefix + the JSON header (with its padding)

    @property
    def model_bytes(self) -> int:
        return self.file_bytes - self.header_bytes


def read_file(path: Path) -> bytes:
    """The bytes of the file at ``path`` (PackedFormatError when it cannot be read)."""
    if not path.exists():
        raise PackedFormatError(f"no packed model at {path}")
    if not path.is_file():
        raise PackedFormatError(f"{path} is not a file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise PackedFormatError(f"cannot read {path}: {err}") from None


def header_length(data: bytes) -> int:
    """The JSON header's length, from a safetensors file's first 8 bytes."""
    return struct.unpack("<Q", data[:HEADER_PREFIX_BYTES])[0]


def packed_header(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file that says it is an apb packed model."""
    not_ours = f"{path} is not an apb packed model (a safetensors file with apb metadata)"
    if len(data) < HEADER_PREFIX_BYTES:
        raise PackedFormatError(f"{not_ours}: it has only {len(data)} bytes")
    n = header_length(data)
    if n > len(data) - HEADER_PREFIX_BYTES:
        raise PackedFormatError(
            f"{not_ours}: its first 8 bytes announce a {n}-byte header, but the file has "
            f"{len(data)} bytes (truncated, or not safetensors)"
        )
    try:
        header = json.loads(data[HEADER_PREFIX_BYTES:HEADER_PREFIX_BYTES + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PackedFormatError(f"{not_ours}: its header is not JSON ({first_line(err)})") from None
    if not isinstance(header, dict):
        raise PackedFormatError(f"{not_ours}: its header is not a JSON object")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or "format" not in metadata:
        raise PackedFormatError(f"{not_ours}: it carries no apb metadata")
    if metadata.get("format") != FORMAT:
        hint = ("; it is XOR-encoded: decode it with apb xor-decode (or apb.pack.xor.load_xor)"
                if metadata.get("format") == "apb-xor" else "")
        raise PackedFormatError(
            f"{not_ours}: its metadata says format {metadata.get('format')!r}, not "
            f"{FORMAT!r}{hint}"
        )
    version = metadata.get("format_version")
    if not isinstance(version, str) or not version.isdigit() or int(version) < 1:
        raise PackedFormatError(f"{path}: invalid format_version {version!r} (damaged file)")
    if int(version) > FORMAT_VERSION:
        raise PackedFormatError(
            f"{path} has packed format version {version}; this apb reads versions up to "
            f"{FORMAT_VERSION}: upgrade apb to read it"
        )
    return metadata


def file_arrays(data: bytes, path: Path) -> dict[str, np.ndarray]:
    """The tensors of a packed file's bytes (PackedFormatError when the table is damaged)."""
    try:
        return load(data)
    except Exception as err:  # SafetensorError and friends for damaged tensor tables
        raise PackedFormatError(
            f"{path}: its tensor table is damaged or truncated ({first_line(err)})"
        ) from None


def parse_metadata(metadata: dict, path: Path) -> tuple[dict | None, dict[str, dict]]:
    """``(architecture, layer configs)`` of a packed file's metadata, every layer entry
    checked (PackedFormatError naming ``path`` and the layer). ``architecture`` is None for
    a file saved from a model outside :mod:`apb.models` (the entry is optional)."""
    docs = {}
    for key in ("architecture", "layers"):
        text = metadata.get(key)
        if text is None and key == "architecture":
            docs[key] = None
            continue
        if not isinstance(text, str):
            raise PackedFormatError(f"{path}: the metadata lacks its {key!r} entry")
        docs[key] = _json(text, key, path)
    arch, layers = docs["architecture"], docs["layers"]
    if arch is not None and (not isinstance(arch, dict) or not isinstance(arch.get("name"), str)
                             or not isinstance(arch.get("kwargs"), dict)):
        raise PackedFormatError(f"{path}: architecture must be {{'name': str, 'kwargs': {{}}}}")
    if not isinstance(layers, dict) or not layers:
        raise PackedFormatError(f"{path}: 'layers' must be a non-empty JSON object")
    for name, cfg in layers.items():
        try:
            validate_layer_config(name, cfg)
        except ValueError as err:
            raise PackedFormatError(f"{path}: layer {name!r}: {err}") from None
    return arch, layers


def parse_tied(metadata: dict, path: Path, stored: set[str]) -> dict[str, str]:
    """The ``tied`` entry (``{alias: stored name}``: names of one shared tensor, stored once
    under its first name), checked against the ``stored`` tensor names; ``{}`` when absent."""
    text = metadata.get("tied")
    if text is None:
        return {}
    tied = _json(text, "tied", path) if isinstance(text, str) else None
    if not isinstance(tied, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tied.items()):
        raise PackedFormatError(f"{path}: 'tied' must map tensor names to tensor names")
    for alias, target in tied.items():
        if alias in stored or target not in stored:
            raise PackedFormatError(
                f"{path}: 'tied' says {alias!r} is the tensor stored as {target!r}, but the "
                f"file {'also stores ' + repr(alias) if alias in stored else 'has no ' + repr(target)}"
            )
    return tied


def _json(text: str, key: str, path: Path):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise PackedFormatError(
            f"{path}: the metadata entry {key!r} is not JSON ({first_line(err)})"
        ) from None


def first_line(err: BaseException) -> str:
    """The first line of an error's message, at most 200 characters (for one-line errors)."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."
