"""Plain numpy oracles of the compiled kernels, one module per kernel module of
:mod:`apb.kernels`: written from the definitions (docs/design.md §2) for clarity, not
speed, independent of the extension and of torch. Tests only: the package never imports
them. ``tests/`` is on ``sys.path`` under pytest, so tests import ``oracles.<module>``.
"""
