from setuptools import setup

setup(
    cffi_modules=[
        "apccache/_build.py:ffi_release",
        "apccache/_build.py:ffi_debug",
    ],
)
