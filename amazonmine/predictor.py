"""The old import path ``amazonmine.predictor``, kept for notebooks: the module is
:mod:`amazonmine.neural.predictor`."""

import sys

from amazonmine.neural import predictor as _module

sys.modules[__name__] = _module
