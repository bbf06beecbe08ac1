"""A worker target for the supervisor tests of the [fleet] service."""

import time


def idle(ctx):
    while ctx.running:
        time.sleep(0.05)
