"""setuptools needs setup() for cffi_modules; everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["ustack/_build_checksum.py:ffibuilder"])
