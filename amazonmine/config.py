"""The old import path ``amazonmine.config``, kept for notebooks: the module is :mod:`amazonmine.core.config`."""

import sys

from amazonmine.core import config as _module

sys.modules[__name__] = _module
