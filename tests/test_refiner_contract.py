"""One contract over every registered refiner: zero strength is the identity, shapes and dtypes
are kept, the canonical spec parses back, and the typed parameter spec refuses bad values."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ovearth.errors import InputError
from ovearth.refine import RefineContext, list_refiners, parse_refine
from ovearth.refine.registry import create_refiner, refiner_class

#: the parameter whose zero makes each refiner the identity
ZERO = {"smooth": {"a": 0.0}, "lowpass": {"b": 0.0}, "laplacian": {"lam": 0.0}, "presence": {"s": 0.0}}
ZERO |= {"attention": {"g": 0.0}, "clip": {"w": 0.0}}
GRID = (6, 7)


def _context(batch: int, tokens: int) -> RefineContext:
    """What the two-pass refiners read from a first pass."""
    weights = torch.rand(batch, tokens)
    return RefineContext(
        prompts=["a"] * batch,
        presence_logits=torch.randn(batch),
        patch_weights={"queries": weights / weights.sum(-1, keepdim=True)},
    )


def test_every_registered_refiner_is_covered():
    assert sorted(ZERO) == list_refiners()


@pytest.mark.parametrize("name", sorted(ZERO))
def test_zero_strength_returns_the_input_itself(name):
    tokens = torch.randn(2, math.prod(GRID), 8)
    refiner = create_refiner(name, **ZERO[name])
    assert refiner(tokens, GRID, RefineContext()) is tokens


@pytest.mark.parametrize(
    "name", sorted(set(ZERO) - {"clip"})
)  # clip needs a CLIP model: tests/test_refine_clip.py
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_are_kept(name, dtype):
    tokens = torch.randn(3, math.prod(GRID), 8, dtype=dtype)
    out = create_refiner(name)(tokens, GRID, _context(3, math.prod(GRID)))
    assert out.shape == tokens.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert not torch.equal(out, tokens)  # the defaults do something


@pytest.mark.parametrize("name", sorted(ZERO))
def test_canonical_spec_parses_back(name):
    pipeline = parse_refine(name)
    assert parse_refine(pipeline.spec()) == pipeline
    assert pipeline.spec().startswith(f"{name}:")


@pytest.mark.parametrize("name", sorted(ZERO))
def test_typed_parameter_spec_refuses_non_finite_and_out_of_range_values(name):
    cls = refiner_class(name)
    for field in dataclasses.fields(cls):
        if field.name in cls.limits:
            low, high = cls.limits[field.name]
            bad = high * 10 + 1 if isinstance(high, int) else high * 10 + 1.0
            with pytest.raises(InputError, match=f"{field.name} must"):
                create_refiner(name, **{field.name: bad})
            if isinstance(field.default, float):
                with pytest.raises(
                    InputError, match=f"{field.name} must"
                ):  # the refiner's or the spec's words
                    create_refiner(name, **{field.name: float("nan")})
