"""Fixtures for the supervisor's tests: unique segments and supervisors that are always cleaned up."""

import os
import secrets

import pytest

from sup_harness import Run, shm_path


@pytest.fixture
def shm_name():
    """A unique segment name, unlinked after the test whatever happens."""
    name = f"apctest-{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        try:
            os.unlink(shm_path(name))
        except FileNotFoundError:
            pass


@pytest.fixture
def supervise(tmp_path_factory):
    """Start supervisors: ``supervise(config_text, args=(), env=None)`` -> Run; all are cleaned up."""
    runs = []

    def start(config_text, args=(), env=None, name=None):
        tmp = tmp_path_factory.mktemp("sup")
        name = name or f"apctest-{secrets.token_hex(6)}"
        run = Run(tmp, name, config_text, args, env)
        runs.append(run)
        return run

    try:
        yield start
    finally:
        errors = []
        for run in runs:
            try:
                run.cleanup()
            except Exception as e:  # pragma: no cover
                errors.append(e)
        if errors:
            raise errors[0]


