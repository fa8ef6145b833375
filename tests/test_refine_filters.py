"""The lowpass and laplacian refiners: their formulas, edge cases and grammar."""

import math

import pytest
import torch

from ovearth.errors import InputError
from ovearth.refine import RefineContext, list_refiners, parse_refine
from ovearth.refine.laplacian import (
    OFFSETS,
    Laplacian,
    edge_weights,
    laplacian_apply,
    laplacian_smooth,
)
from ovearth.refine.lowpass import LowPass, disc_mask

CTX = RefineContext()


def grid_tokens(field: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` or ``[H, W, C]`` field -> ``[1, H * W, C]`` tokens."""
    if field.dim() == 2:
        field = field[..., None]
    h, w, c = field.shape
    return field.reshape(1, h * w, c)


def checkerboard(h: int, w: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((-1.0) ** (i + j)).to(torch.float32)


# ---------------------------------------------------------------- lowpass


@pytest.mark.parametrize("r", [0.0, 0.5, 3.0, 100.0])
def test_lowpass_keeps_a_constant_grid(r):
    const = torch.full((2, 48, 3), 1.7)
    torch.testing.assert_close(LowPass(r=r, b=1.0)(const, (6, 8), CTX), const)


@pytest.mark.parametrize("grid", [(8, 8), (6, 10)])
def test_lowpass_removes_the_checkerboard_below_nyquist_and_keeps_it_above(grid):
    h, w = grid
    board = grid_tokens(checkerboard(h, w))
    nyquist = math.hypot(h / 2, w / 2)  # distance of the checkerboard's frequency to zero
    removed = LowPass(r=h / 2 - 0.1, b=1.0)(board, grid, CTX)
    assert removed.abs().max() < 1e-5
    torch.testing.assert_close(LowPass(r=nyquist + 0.01, b=1.0)(board, grid, CTX), board)


@pytest.mark.parametrize("grid", [(8, 8), (6, 10), (7, 9)])
def test_lowpass_with_the_full_radius_is_the_identity(grid):
    h, w = grid
    tokens = torch.randn(2, h * w, 5)
    out = LowPass(r=math.hypot(h / 2, w / 2), b=1.0)(tokens, grid, CTX)
    torch.testing.assert_close(out, tokens, atol=1e-5, rtol=0)


def test_lowpass_cuts_a_wave_exactly_at_its_wrap_around_distance():
    """``1 + cos(2 pi (2 i / 8 - 3 j / 12))`` on 8 x 12: the wave sits at distance sqrt(13) = 3.606."""
    i, j = torch.meshgrid(torch.arange(8.0), torch.arange(12.0), indexing="ij")
    wave = torch.cos(2 * math.pi * (2 * i / 8 - 3 * j / 12))
    tokens = grid_tokens(1.0 + wave)
    torch.testing.assert_close(LowPass(r=3.5, b=1.0)(tokens, (8, 12), CTX), torch.ones_like(tokens))
    torch.testing.assert_close(LowPass(r=3.7, b=1.0)(tokens, (8, 12), CTX), tokens)


def test_lowpass_zero_mix_returns_the_input_and_mixes_convexly():
    tokens = torch.randn(2, 48, 4)
    assert LowPass(r=2, b=0.0)(tokens, (6, 8), CTX) is tokens
    low = LowPass(r=2, b=1.0)(tokens, (6, 8), CTX)
    assert (low - tokens).abs().max() > 0.1  # r = 2 changes random tokens
    torch.testing.assert_close(LowPass(r=2, b=0.3)(tokens, (6, 8), CTX), 0.7 * tokens + 0.3 * low)


def test_lowpass_mask_equals_the_centred_disc_after_fftshift():
    for h, w in [(8, 8), (6, 10), (7, 9)]:
        u, v = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centred = (u - h // 2) ** 2 + (v - w // 2) ** 2 <= 3.0**2  # disc on the fftshift-ed spectrum
        assert torch.equal(disc_mask((h, w), 3.0), torch.fft.ifftshift(centred))


def test_a_disc_around_the_middle_of_the_unshifted_spectrum_is_a_high_pass():
    """Counter-example to MISSION.md's sketch: centring on (H/2, W/2) without fftshift."""
    h, w, r = 8, 8, 2.0
    u, v = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    wrong = (u - h / 2) ** 2 + (v - w / 2) ** 2 <= r**2

    def wrong_lowpass(field):
        return torch.fft.ifft2(torch.fft.fft2(field) * wrong).real

    const, board = torch.ones(h, w), checkerboard(h, w)
    assert wrong_lowpass(const).abs().max() < 1e-6  # the mean is removed
    torch.testing.assert_close(wrong_lowpass(board), board)  # the Nyquist checkerboard is kept
    right = LowPass(r=r, b=1.0)
    torch.testing.assert_close(right(grid_tokens(const), (h, w), CTX), grid_tokens(const))
    assert right(grid_tokens(board), (h, w), CTX).abs().max() < 1e-6


def test_lowpass_treats_batch_items_and_channels_independently():
    grid, f = (6, 10), LowPass(r=2.5, b=0.6)
    a, b, c = torch.randn(2, 60, 3), torch.randn(1, 60, 3), torch.randn(2, 60, 4)
    torch.testing.assert_close(f(torch.cat([a, b]), grid, CTX), torch.cat([f(a, grid, CTX), f(b, grid, CTX)]))
    torch.testing.assert_close(
        f(torch.cat([a, c], dim=2), grid, CTX), torch.cat([f(a, grid, CTX), f(c, grid, CTX)], dim=2)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_lowpass_returns_the_input_dtype(dtype):
    tokens = torch.randn(1, 48, 3).to(dtype)
    out = LowPass(r=2, b=0.5)(tokens, (6, 8), CTX)
    assert out.dtype == dtype
    reference = LowPass(r=2, b=0.5)(tokens.double(), (6, 8), CTX)
    torch.testing.assert_close(out.double(), reference, atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------- laplacian


def dense_laplacian(weights, grid, nb):
    """Explicit ``[B, N, N]`` L = D - W from the edge maps, cell by cell (no shifting)."""
    h, w = grid
    bsz = weights[0].shape[0]
    lap = torch.zeros(bsz, h * w, h * w, dtype=weights[0].dtype)
    for (dy, dx), wmap in zip(OFFSETS[nb], weights, strict=True):
        for y in range(h):
            for x in range(w):
                y2, x2 = y + dy, x + dx
                if not (0 <= y2 < h and 0 <= x2 < w):
                    continue  # no wrap-around
                weight = wmap[:, y, x - max(0, -dx)]
                i, j = y * w + x, y2 * w + x2
                lap[:, i, j] -= weight
                lap[:, j, i] -= weight
                lap[:, i, i] += weight
                lap[:, j, j] += weight
    return lap


def correlated_tokens(b, grid, c, noise, seed=0):
    """A shared vector per batch item plus noise: cosines near 1, so the system is not trivial."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    base = torch.randn(b, 1, c, generator=gen)
    return base + noise * torch.randn(b, h * w, c, generator=gen)


def relative_residual(x, tokens, grid, lam, sigma, nb):
    b, n, c = tokens.shape
    h, w = grid
    weights = edge_weights(tokens.reshape(b, h, w, c), sigma, nb)
    ax = laplacian_apply(x.reshape(b, h, w, c), weights, lam)
    return float((ax.reshape(b, n, c) - tokens).norm() / tokens.norm())


@pytest.mark.parametrize("nb", [4, 8])
def test_edge_weights_follow_the_cosine_kernel(nb):
    sigma = 0.3
    tokens = torch.randn(2, 20, 6, dtype=torch.float64)
    cells = tokens.reshape(2, 4, 5, 6)
    weights = edge_weights(cells, sigma, nb)
    for (dy, dx), wmap in zip(OFFSETS[nb], weights, strict=True):
        assert wmap.shape == (2, 4 - dy, 5 - abs(dx))
        y, x = 1, 2  # an inner cell, neighbour (y + dy, x + dx)
        cos = torch.nn.functional.cosine_similarity(cells[:, y, x], cells[:, y + dy, x + dx], dim=-1)
        torch.testing.assert_close(wmap[:, y, x - max(0, -dx)], torch.exp((cos - 1) / sigma))
        assert (wmap > 0).all() and (wmap <= 1).all()


@pytest.mark.parametrize("nb", [4, 8])
def test_cg_matches_a_dense_solve_and_the_operator_is_the_dense_laplacian(nb):
    """float64 so that the comparison is limited by the solver tolerance, not by rounding."""
    grid, lam, sigma = (5, 6), 0.7, 0.5
    tokens = correlated_tokens(2, grid, 3, noise=0.5).double()
    weights = edge_weights(tokens.reshape(2, 5, 6, 3), sigma, nb)
    lap = dense_laplacian(weights, grid, nb)
    torch.testing.assert_close(lap, lap.transpose(1, 2))
    system = torch.eye(30, dtype=torch.float64) + lam * lap
    # the matrix-free operator, applied to every basis vector, is the dense matrix
    basis = torch.eye(30, dtype=torch.float64).reshape(1, 5, 6, 30).expand(2, -1, -1, -1)  # channel k = e_k
    torch.testing.assert_close(laplacian_apply(basis, weights, lam).reshape(2, 30, 30), system)
    expected = torch.linalg.solve(system, tokens)
    out, used = laplacian_smooth(tokens, grid, lam, sigma, nb, iters=200, tol=1e-12)
    assert 1 < used < 30
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(Laplacian(lam=lam, sigma=sigma, nb=nb, tol=1e-12)(tokens, grid, CTX), out)


@pytest.mark.parametrize("nb", [4, 8])
def test_cg_reaches_the_tolerance_in_float32(nb):
    """float32 tokens on a 16 x 16 x 32 grid: the residual computed afresh is below 1e-5."""
    grid, lam, sigma = (16, 16), 2.0, 0.1
    tokens = correlated_tokens(2, grid, 32, noise=0.3)
    out, used = laplacian_smooth(tokens, grid, lam, sigma, nb, iters=200, tol=1e-6)
    assert out.dtype == torch.float32 and used < 200
    assert (out - tokens).norm() / tokens.norm() > 0.05  # the system is far from the identity
    assert relative_residual(out, tokens, grid, lam, sigma, nb) < 1e-5


def test_laplacian_zero_lambda_returns_the_input():
    tokens = torch.randn(2, 20, 3)
    assert Laplacian(lam=0.0)(tokens, (4, 5), CTX) is tokens


@pytest.mark.parametrize("nb", [4, 8])
def test_laplacian_rows_sum_to_zero(nb):
    weights = edge_weights(torch.randn(2, 5, 7, 4), 0.2, nb)
    const = torch.full((2, 5, 7, 3), 2.5)
    torch.testing.assert_close(laplacian_apply(const, weights, 10.0), const)  # (I + lam L) c = c
    tokens = torch.full((1, 35, 4), -0.8)
    torch.testing.assert_close(Laplacian(lam=5.0, nb=nb)(tokens, (5, 7), CTX), tokens)


def test_laplacian_keeps_an_edge_and_removes_noise_inside():
    h, w, c = 12, 12, 16
    gen = torch.Generator().manual_seed(1)
    clean = torch.zeros(h, w, c)
    clean[:, : w // 2, 0] = 1.0  # left half: e0
    clean[:, w // 2 :, 1] = 1.0  # right half: e1, orthogonal
    noisy = clean + 0.05 * torch.randn(h, w, c, generator=gen)
    tokens = grid_tokens(noisy)

    def stats(out):
        cells = out.reshape(h, w, c)
        left, right = cells[:, : w // 2], cells[:, w // 2 :]
        gap = (left.mean((0, 1)) - right.mean((0, 1))).norm()
        noise = torch.cat([(left - left.mean((0, 1))).flatten(), (right - right.mean((0, 1))).flatten()])
        return float(gap), float(noise.std())

    gap0, noise0 = stats(tokens)
    gap, noise = stats(Laplacian(lam=3.0, sigma=0.1)(tokens, (h, w), CTX))
    assert gap > 0.9 * gap0  # the halves stay distinct
    assert noise < 0.5 * noise0  # noise inside each half is reduced
    blurred_gap, _ = stats(Laplacian(lam=3.0, sigma=100.0)(tokens, (h, w), CTX))
    assert blurred_gap < 0.8 * gap0  # a flat kernel (large sigma) smears the edge


def test_eight_neighbours_differ_from_four_and_solve_their_own_system():
    grid = (8, 8)
    tokens = correlated_tokens(1, grid, 8, noise=0.4, seed=3)
    four = Laplacian(lam=1.0, sigma=0.2, nb=4)(tokens, grid, CTX)
    eight = Laplacian(lam=1.0, sigma=0.2, nb=8)(tokens, grid, CTX)
    assert (four - eight).abs().max() > 1e-2
    assert relative_residual(eight, tokens, grid, 1.0, 0.2, 8) < 1e-5
    assert relative_residual(eight, tokens, grid, 1.0, 0.2, 4) > 1e-3  # not the 4-neighbour solution


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_laplacian_returns_the_input_dtype(dtype):
    tokens = correlated_tokens(1, (4, 5), 3, noise=0.5).to(dtype)
    out = Laplacian(lam=1.0, sigma=0.5)(tokens, (4, 5), CTX)
    assert out.dtype == dtype
    reference = Laplacian(lam=1.0, sigma=0.5)(tokens.double(), (4, 5), CTX)
    torch.testing.assert_close(out.double(), reference, atol=3e-2, rtol=3e-2)


# ---------------------------------------------------------------- registry and grammar


def test_filters_are_registered_and_parse():
    names = list_refiners()
    assert "lowpass" in names and "laplacian" in names
    pipe = parse_refine("lowpass:r=12,b=0.2+laplacian:lam=0.5")
    assert pipe.refiners == (LowPass(r=12, b=0.2), Laplacian(lam=0.5))
    assert parse_refine(pipe.spec()) == pipe
    assert parse_refine("lowpass").refiners == (LowPass(),)
    assert parse_refine("laplacian:nb=8,sigma=0.05,iters=50,tol=1e-4").refiners[0] == Laplacian(
        sigma=0.05, nb=8, iters=50, tol=1e-4
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lowpass:r=-1", "r must be a radius >= 0"),
        ("lowpass:b=1.5", r"b must be a mix weight in \[0, 1\]"),
        ("lowpass:b=-0.1", r"b must be a mix weight in \[0, 1\]"),
        ("laplacian:nb=6", "nb must be 4 or 8"),
        ("laplacian:sigma=0", "sigma must be a kernel width > 0"),
        ("laplacian:sigma=-0.1", "sigma must be a kernel width > 0"),
        ("laplacian:lam=-0.5", "lam must be >= 0"),
        ("laplacian:iters=0", "iters must be an integer >= 1"),
        ("laplacian:tol=0", "tol must be a relative residual > 0"),
        ("lowpass:radius=3", "no parameter 'radius'"),
    ],
)
def test_bad_filter_parameters_raise_input_errors(spec, message):
    with pytest.raises(InputError, match=message):
        parse_refine(spec)
