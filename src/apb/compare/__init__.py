"""``apb compare``: every method on one harness (accuracy, memory, latency side by side).

>>> from apb.compare import CompareConfig, run_compare
>>> report = run_compare(CompareConfig(methods="fp,bnn,apb@0.02", seeds=3))
"""

from .report import KEEP_MARKER, keep_hand_written, markdown_table, pareto_front, plot_pareto
from .run import DEFAULT_METHODS, CompareConfig, measure_latency, run_compare
from .spec import MethodSpec, MethodSpecError, parse_method, parse_methods

__all__ = [
    "DEFAULT_METHODS", "KEEP_MARKER", "CompareConfig", "MethodSpec", "MethodSpecError",
    "keep_hand_written", "markdown_table", "measure_latency", "parse_method", "parse_methods",
    "pareto_front", "plot_pareto", "run_compare",
]
