"""Fixtures for the engine and API tests (defined in apc_support.py, which
test modules import helpers from: a second conftest module name would clash
with the ones in the subfolders)."""
from apc_support import FakeClock, cache, ccache, clock, segment_name, segments  # noqa: F401
