"""LUNA16 evaluation: FROC / CPM as the challenge script computes it, bootstrap intervals,
paired comparison of two mark sets, FROC plots (deepem.eval.plots, needs matplotlib).
numpy only: importing it does not import torch."""
from .froc import FP_RATES, FrocResult, compare, evaluate, read_marks, write_marks

__all__ = ["FP_RATES", "FrocResult", "compare", "evaluate", "read_marks", "write_marks"]
