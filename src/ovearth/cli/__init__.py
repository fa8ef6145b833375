"""The ``ovearth`` command: a thin layer over the Python API (one module per command group)."""

from . import benchmarks, calibrate, explore, images, reproduce, tools, training, vector  # noqa: F401  (each registers its commands on the app)
from .app import app, main, resolve_device

__all__ = ["app", "main", "resolve_device"]
