"""Imports every built-in refiner module so that each registers itself."""

from . import smooth  # noqa: F401
