"""Imports every built-in refiner module so that each registers itself."""

from . import attention, clip, laplacian, lowpass, presence, smooth  # noqa: F401
