"""The fixtures every test may use, from tests/helpers (where test modules
import helpers from too: a second conftest module name would clash with
the ones in the subfolders)."""
from helpers.segments import cache, ccache, clock, segments, shm_name, shm_names  # noqa: F401
from helpers.supervisors import supervise  # noqa: F401
