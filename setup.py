"""setuptools needs setup() for cffi_modules; everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["ustack/wire/_build_checksum.py:ffibuilder"])
