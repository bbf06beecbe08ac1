"""apcstat: see inside a live apccache segment and the supervisor's workers.

Run it as ``apcstat NAME`` (or ``python -m apccache.stat NAME``); see
``apccache.stat.cli`` for the commands.  Reading never disturbs the cache:
no hit, miss or access time is counted, nothing in the segment is written
(``clear`` and ``delete`` aside), and no lock is held longer than one
snapshot of the slot table.

``collect(cache)`` returns what the summary shows as one JSON-ready dict,
for programs that want the numbers without the command line.
"""
from .cli import main
from .collect import SCHEMA, collect, list_segments

__all__ = ["main", "collect", "list_segments", "SCHEMA"]
