"""The example's [init] command: check the segment and seed it before any worker starts.

The supervisor passes the segment's name in APCCACHE_NAME.  A non-zero exit
here stops start-up (fail_on_error = true) with this script's exit code.
"""

import os
import sys
import time

import apccache


def main():
    name = os.environ["APCCACHE_NAME"]
    cache = apccache.Cache.attach(name)
    try:
        cache.store("example:started", time.time())
        cache.store("example:settings", {"tile_size": 24, "max_iter": 200})
        problems = cache.check()
        if problems:
            print(f"preflight: the segment {name!r} is inconsistent: {problems[0]}", file=sys.stderr)
            return 1
        print(f"preflight: segment {name!r} ready and seeded")
        return 0
    finally:
        cache.close()


if __name__ == "__main__":
    sys.exit(main())
