"""The stages, one module per command (``amazonmine <command>``), each a ``run_<stage>(cfg, ...)``.

A stage never imports another stage (the import contracts in pyproject.toml); stages meet through the files of the run
folder (:mod:`amazonmine.core.runfolder`).
"""
