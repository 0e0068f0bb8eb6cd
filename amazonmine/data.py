"""The old import path ``amazonmine.data``, kept for notebooks: the module is :mod:`amazonmine.core.data`."""

import sys

from amazonmine.core import data as _module

sys.modules[__name__] = _module
