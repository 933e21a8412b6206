"""Convert a packed or XOR-encoded model file to the current format version (``apb repack``).

A file of format version 1 was written before files carried a checksum. Nothing tells it
from a checked file whose checksum was stripped and whose contents were then edited, so the
loaders refuse it unless told to trust it (``allow_unverified=True``). Repacking is that
trust made once, by the user, for a file they know: the file is loaded with the opt-in (a
one-line :class:`~apb.pack.header.UncheckedFileWarning` says that it was trusted), every
other check of loading still applies, and the model is written again through the ordinary
writers, atomically, as a checked file of the current version: a packed file stays a
packed file, an XOR-encoded one is encoded again with its recorded seed and scheme.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..io import atomic_write
from ..pack import FORMAT_VERSION, PackedFileInfo, load_packed, packed_bytes, save_packed
from ..pack.xor import FORMAT_VERSION as XOR_FORMAT_VERSION
from ..pack.xor import encode_bytes, is_xor_file, load_xor, recorded_encoding
from .common import check_outputs


@dataclass(frozen=True)
class Repacked:
    """What :func:`repack_file` wrote: ``kind`` (``"packed"`` or ``"XOR-encoded"``), its
    ``format_version`` and its sizes."""

    kind: str
    format_version: int
    info: PackedFileInfo


def repack_file(src: str | os.PathLike, dst: str | os.PathLike, *,
                model: nn.Module | None = None) -> Repacked:
    """Write the model file ``src``, trusted without a checksum if it has none, to ``dst``
    in the current format version (module docstring).

    ``model``: the model to fill, for a file saved from a model outside
    :mod:`apb.models` (as for :func:`apb.pack.load_packed`). Raises
    :class:`~apb.pack.PackedFormatError` / :class:`~apb.pack.xor.XorFormatError` when
    ``src`` is missing, damaged or not an apb model file; nothing is written then.
    """
    src, dst = Path(src), Path(dst)
    check_outputs(dst)
    if is_xor_file(src):
        loaded = load_xor(src, model=model, allow_unverified=True)
        seed, scheme = recorded_encoding(src)
        out, report = encode_bytes(packed_bytes(loaded), where=str(src), seed=seed,
                                   scheme=scheme)
        atomic_write(dst, lambda f: f.write(out))
        return Repacked("XOR-encoded", XOR_FORMAT_VERSION, report.encoded)
    loaded = load_packed(src, model=model, allow_unverified=True)
    return Repacked("packed", FORMAT_VERSION, save_packed(loaded, dst))
