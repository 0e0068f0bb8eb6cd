"""amazonmine: find illegal gold mining (and 16 other labels) in Planet satellite chips of the Amazon.

The package's folders are its parts:

- ``amazonmine.stages``: one module per command (``split``, ``train``, ``scan``, ...), each a ``run_<stage>``;
  stages never import each other and meet through the files of the run folder;
- ``amazonmine.neural``: the network and what runs it (model, datasets, fitting, predictor); the only folder that
  imports TensorFlow, and only inside its functions;
- ``amazonmine.scanning``: georeferenced scenes cut into tiles, sites, GIS files, STAC Items, label polygons;
- ``amazonmine.core``: config, labels, metrics, decisions, the run folder, bundles, atomic files, logging, errors;
- ``amazonmine.cli``: the command line over all of them.

Importing the package is cheap on purpose, so ``amazonmine --help``, dehaze workers, split and tune start in well
under a second. ``amazonmine.predictor.Predictor`` is the notebook API.
"""

__version__ = "0.1.0"
