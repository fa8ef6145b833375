"""Training-free refinement of SAM 3's patch tokens (see ``base`` for the protocol)."""

from .base import RefineContext, Refiner, as_grid, as_tokens
from .registry import RefinePipeline, create_refiner, list_refiners, parse_refine, register

__all__ = [
    "RefineContext",
    "RefinePipeline",
    "Refiner",
    "as_grid",
    "as_tokens",
    "create_refiner",
    "list_refiners",
    "parse_refine",
    "register",
]
