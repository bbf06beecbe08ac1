"""What the tests share, each defined once.

- ``helpers.segments``: unique segment names, the ``segments`` fixture and
  its relatives (``cache``, ``ccache``, ``clock``, ``shm_name``,
  ``shm_names``), a clock moved by hand, and set-ups that fill a segment.
  Every segment and name a fixture hands out is unlinked at the end of its
  test, even when it fails.
- ``helpers.children``: the environment a child Python needs to import
  this checkout, running code in a fresh interpreter or a group of
  multiprocessing children, running code as another user, waiting for what
  a child does, what /proc says of a child, a free port.
- ``helpers.supervisors``: ``python -m apccache supervise`` as a child,
  observed through its scoreboard, events and log, and always stopped.

pytest puts tests/ on sys.path (tests/ is not a package; its conftest.py
is the rootdir's), so test modules and conftest files in every folder import
these as ``from helpers.segments import ...``.  tests/conftest.py makes the
fixtures available everywhere; a folder's conftest.py may override one with
its own defaults (tests/files' caches are larger).
"""
