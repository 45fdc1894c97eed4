"""k-fold cross-validation: one training run per fold, out-of-fold predictions pooled into one evaluation.

A layer above :mod:`mammodetr.training` and :mod:`mammodetr.evaluation` (it trains with the one, scores with the
other). ``from mammodetr.cv import cross_validate, CVOptions``.
"""

from mammodetr.cv.plan import CVOptions
from mammodetr.cv.runner import cross_validate

__all__ = ["cross_validate", "CVOptions"]
