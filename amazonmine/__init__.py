"""amazonmine: find illegal gold mining (and 16 other labels) in Planet satellite chips of the Amazon.

Importing the package is cheap on purpose: TensorFlow is imported only inside the modules that build, train
or run a model (model, pipeline, train, predict), so ``amazonmine --help``, dehaze workers, split and tune
start in well under a second.
"""

__version__ = "0.1.0"
