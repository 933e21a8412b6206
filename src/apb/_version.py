"""The package version, in a module of its own so that any part of apb can record it
(file headers, checkpoints) without importing the package root."""

__version__ = "0.1.0"
