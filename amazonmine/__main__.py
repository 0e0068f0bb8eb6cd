"""``python -m amazonmine``: the same command line as ``amazonmine``."""

from amazonmine.cli import main

main(prog_name="amazonmine")
