"""The refiner registry, the --refine grammar, and the smooth refiner's formula."""

import pytest
import torch

from ovearth.errors import InputError
from ovearth.refine import RefineContext, list_refiners, parse_refine
from ovearth.refine.smooth import Smooth, mean_filter

CTX = RefineContext()


def test_grammar_composes_left_to_right_with_typed_values():
    pipe = parse_refine("smooth:a=0.5,k=5,mode=convex + smooth")
    first, second = pipe.refiners
    assert (first.a, first.k, first.mode) == (0.5, 5, "convex") and isinstance(first.k, int)
    assert second == Smooth()
    assert pipe.spec() == "smooth:a=0.5,k=5,mode=convex+smooth:a=0.2,k=3,mode=residual"
    assert parse_refine(pipe.spec()) == pipe  # the canonical spec parses back to the same pipeline
    assert not parse_refine("") and not parse_refine("none")
    x = torch.randn(2, 16, 4)
    torch.testing.assert_close(pipe(x, (4, 4), CTX), second(first(x, (4, 4), CTX), (4, 4), CTX))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("smoth:a=0.2", "Did you mean smooth"),
        ("smooth:alpha=0.2", "no parameter 'alpha'.*a, k, mode"),
        ("smooth:k=4", "odd window"),
        ("smooth:a", "not key=value"),
        ("smooth++smooth", "empty refiner name"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(InputError, match=message):
        parse_refine(spec)


def test_registry_lists_builtins():
    assert "smooth" in list_refiners()


def test_mean_filter_clips_windows_at_the_border():
    x = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)
    out = mean_filter(x, 3)
    assert out[0, 0, 1, 1] == 4.0  # centre: mean of all nine
    assert out[0, 0, 0, 0] == (0 + 1 + 3 + 4) / 4  # corner: mean of the four cells inside
    assert out[0, 0, 0, 1] == (0 + 1 + 2 + 3 + 4 + 5) / 6


def test_smooth_formulas_and_zero_strength():
    tokens = torch.randn(2, 20, 3)
    grid = (4, 5)
    s = as_s = mean_filter(tokens.transpose(1, 2).reshape(2, 3, 4, 5), 3).reshape(2, 3, 20).transpose(1, 2)
    torch.testing.assert_close(Smooth(a=0.2)(tokens, grid, CTX), tokens + 0.2 * s)
    torch.testing.assert_close(Smooth(a=0.3, mode="convex")(tokens, grid, CTX), 0.7 * tokens + 0.3 * as_s)
    assert Smooth(a=0.0)(tokens, grid, CTX) is tokens
    constant = torch.full((1, 20, 3), 2.0)
    torch.testing.assert_close(Smooth(a=0.5, mode="convex")(constant, grid, CTX), constant)  # edges included
