"""The packed file's header: what marks a safetensors file as an apb packed model, and
its metadata read and checked before any tensor is (docs/design.md §4).

A safetensors file starts with the length of its JSON header (8 bytes, little-endian),
then the header: the tensor table and ``__metadata__``, whose ``format``,
``format_version``, ``layers`` and the optional ``architecture`` and ``tied`` entries
:func:`packed_header`, :func:`parse_metadata` and :func:`parse_tied` check, naming the file
and the layer in every error.
"""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load

from .layer_tensors import validate_layer_config
from .limits import LoadLimitError, check_header_length

FORMAT = "apb-packed"
FORMAT_VERSION = 2
"""2: the metadata's ``sha256`` entry covers every other metadata entry and every tensor
(:func:`content_digest`); 1: no checksum, refused unless the caller trusts the file
(``allow_unverified=True``, or ``apb repack`` to convert it; :func:`require_checksum`)."""
HEADER_PREFIX_BYTES = 8
DIGEST_KEY = "sha256"


class PackedFormatError(ValueError):
    """A packed model file is missing, truncated, corrupt, not ours, or does not fit the
    architecture it names; the message says which and what was expected."""


class UncheckedFileWarning(UserWarning):
    """A model file of a format version without a checksum (1) was read because the caller
    said to trust it (``allow_unverified=True``): its integrity was not checked."""


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
        check_header_length(n)
    except LoadLimitError as err:
        raise PackedFormatError(f"{path}: {err}") from None
    try:
        header = json.loads(data[HEADER_PREFIX_BYTES:HEADER_PREFIX_BYTES + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise PackedFormatError(f"{not_ours}: its header is not JSON ({first_line(err)})") from None
    if not isinstance(header, dict):
        raise PackedFormatError(f"{not_ours}: its header is not a JSON object")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or "format" not in metadata:
        raise PackedFormatError(f"{not_ours}: it carries no apb metadata")
    check_format(metadata, path)
    return metadata


def check_format(metadata: dict, path: Path | str) -> int:
    """The format version of packed metadata (``format`` and ``format_version`` checked:
    ours, an ASCII integer, not newer than this apb reads); PackedFormatError otherwise."""
    not_ours = f"{path} is not an apb packed model (a safetensors file with apb metadata)"
    if metadata.get("format") != FORMAT:
        hint = ("; it is XOR-encoded: decode it with apb xor-decode (or apb.pack.xor.load_xor)"
                if metadata.get("format") == "apb-xor" else "")
        raise PackedFormatError(
            f"{not_ours}: its metadata says format {metadata.get('format')!r}, not "
            f"{FORMAT!r}{hint}"
        )
    return check_version(metadata.get("format_version"), FORMAT_VERSION, "packed", path,
                         PackedFormatError)


def check_version(version, newest: int, what: str, path: Path | str,
                  error: type[Exception]) -> int:
    """A ``format_version`` entry as an int: ASCII digits, 1 to ``newest``."""
    if (not isinstance(version, str) or not version.isascii() or not version.isdigit()
            or len(version) > 6 or int(version) < 1):
        raise error(f"{path}: invalid format_version {version!r}, expected a small ASCII "
                    "integer (damaged file)")
    if int(version) > newest:
        raise error(f"{path} has {what} format version {version}; this apb reads versions up "
                    f"to {newest}: upgrade apb to read it")
    return int(version)


def content_digest(metadata: dict[str, str], arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every metadata entry but ``sha256`` itself (in key order) and every
    tensor's name, dtype, shape and bytes (in name order), each field length-prefixed."""
    h = hashlib.sha256()

    def field(b: bytes) -> None:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    for key in sorted(metadata):
        if key != DIGEST_KEY:
            field(key.encode("utf-8"))
            field(str(metadata[key]).encode("utf-8"))
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        field(name.encode("utf-8"))
        field(f"{a.dtype.str}{list(a.shape)}".encode())
        h.update(a.nbytes.to_bytes(8, "little"))
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def require_checksum(version: int, path: Path | str, error: type[Exception],
                     what: str = "packed", allow_unverified: bool = False,
                     warn: bool = True) -> None:
    """Refuse a file of a format version without a checksum (1) unless the caller trusts it
    (``allow_unverified``), then with a :class:`UncheckedFileWarning` (unless not ``warn``).

    Such a file cannot be told from a checked file relabelled version 1 after its checksum
    was stripped and its contents edited, so it is never read silently: it is refused
    before anything else is read, with a message saying how to convert it."""
    if version >= 2:
        return
    if not allow_unverified:
        raise error(f"{path} ({what} format version {version}) was written by an older apb "
                    "without a checksum, so its integrity cannot be checked and it is refused; "
                    "if you trust it, convert it with `apb repack IN OUT` (or pass "
                    "allow_unverified=True)")
    if warn:
        warnings.warn(f"trusting {path} ({what} format version {version}) without a "
                      "checksum, as allow_unverified asks: its integrity is not checked (a "
                      "file this apb writes carries one)", UncheckedFileWarning,
                      stacklevel=3)


def verify_digest(metadata: dict[str, str], arrays: dict[str, np.ndarray], version: int,
                  path: Path | str, error: type[Exception], what: str = "packed",
                  allow_unverified: bool = False) -> None:
    """Compare the metadata's ``sha256`` with :func:`content_digest` (format version 2 and
    later); a version-1 file has none and passes only with ``allow_unverified``
    (:func:`require_checksum`, which the loaders call first, warns)."""
    if version < 2:
        require_checksum(version, path, error, what, allow_unverified, warn=False)
        return
    recorded = metadata.get(DIGEST_KEY)
    if not isinstance(recorded, str):
        raise error(f"{path}: the metadata lacks its {DIGEST_KEY!r} checksum entry, which "
                    f"{what} format version {version} requires (damaged file)")
    if content_digest(metadata, arrays) != recorded:
        raise error(f"{path}: its contents do not match their sha256 checksum: the metadata "
                    "or a tensor was changed or damaged after it was written; write the file "
                    "again from its source")


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
