"""LUNA16 evaluation: FROC / CPM as the challenge script computes it, bootstrap intervals,
paired comparison of two mark sets, FROC plots (deepem.eval.plots, needs matplotlib).
numpy only: nothing here uses torch (though `import deepem` loads the compiled ops)."""
from .froc import FP_RATES, FrocResult, compare, evaluate, read_marks, write_marks

__all__ = ["FP_RATES", "FrocResult", "compare", "evaluate", "read_marks", "write_marks"]
