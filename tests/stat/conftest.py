"""Fixtures for the apcstat tests; they live in stat_support.py, which the
test modules import helpers from."""
from stat_support import *  # noqa: F401,F403
