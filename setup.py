import os
import shlex

from setuptools import Extension, setup

setup(
    cffi_modules=[
        "apccache/_build.py:ffi_release",
        "apccache/_build.py:ffi_debug",
    ],
    # fetch and store as CPython methods over the cffi-bound engine (see
    # csrc/fastpath.c); it links none of the engine itself.
    ext_modules=[
        Extension(
            "apccache._fastpath",
            sources=["csrc/fastpath.c"],
            include_dirs=["csrc"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]
            + shlex.split(os.environ.get("APCCACHE_CFLAGS", "")),
        )
    ],
)
