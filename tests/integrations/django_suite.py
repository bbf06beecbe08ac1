"""Run Django's own cache tests (tests/cache/tests.py of the installed
Django's sdist, unmodified) against apccache.integrations.django.ApcCache.

    python tests/integrations/django_suite.py DJANGO_TESTS_DIR SEGMENT

DJANGO_TESTS_DIR holds Django's ``cache`` test package; SEGMENT is the
segment name to use (the caller unlinks it).  The test class is Django's
own ``BaseCacheTests`` mixed into ``TestCase``, with the cache settings
built by the suite's own ``caches_setting_for_tests``, excluding the same
caches Django excludes for its Redis backend (``cull`` and ``zero_cull``:
apccache evicts by memory, not by an entry count).  Exit status 0 if every
test passed; the last line is a JSON summary.
"""
import json
import sys
import unittest

tests_dir, segment = sys.argv[1], sys.argv[2]
sys.path.insert(0, tests_dir)

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure(
    DEBUG=False,
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
        "cache",
    ],
    CACHES={"default": {"BACKEND": "apccache.integrations.django.ApcCache", "LOCATION": segment}},
    MIDDLEWARE=[],
    ROOT_URLCONF=None,
    SECRET_KEY="django-suite",
    USE_TZ=False,
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
)
django.setup()

from django.test import TestCase, override_settings  # noqa: E402
from django.test.runner import DiscoverRunner  # noqa: E402

from cache import tests as upstream  # noqa: E402

APC_PARAMS = {
    "BACKEND": "apccache.integrations.django.ApcCache",
    "LOCATION": segment,
    "OPTIONS": {"size": "32M"},
}
apc_excluded_caches = {"cull", "zero_cull"}  # as redis_excluded_caches


@override_settings(
    CACHES=upstream.caches_setting_for_tests(base=APC_PARAMS, exclude=apc_excluded_caches)
)
class ApcCacheTests(upstream.BaseCacheTests, TestCase):
    pass


def main():
    runner = DiscoverRunner(verbosity=1, interactive=False)
    suite = unittest.TestLoader().loadTestsFromTestCase(ApcCacheTests)
    runner.setup_test_environment()  # ALLOWED_HOSTS=["testserver"], as runtests.py has it
    old = runner.setup_databases()
    try:
        result = unittest.TextTestRunner(verbosity=1, stream=sys.stderr).run(suite)
    finally:
        runner.teardown_databases(old)
        runner.teardown_test_environment()
    summary = {
        "run": result.testsRun,
        "failures": len(result.failures),
        "errors": len(result.errors),
        "skipped": [f"{t.id()}: {why}" for t, why in result.skipped],
        "expected_failures": len(result.expectedFailures),
        "unexpected_successes": len(result.unexpectedSuccesses),
    }
    print(json.dumps(summary))
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
