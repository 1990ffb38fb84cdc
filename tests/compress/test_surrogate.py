"""The l1/l2 surrogate and the differentiable bilinear table lookup."""

from __future__ import annotations

import pytest
import torch

from edgetrim.compress.surrogate import bilinear_ms, flops_term, soft_count


def _grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    in_axis = torch.tensor([1.0, 2.0, 4.0, 8.0, 9.0], dtype=torch.float64)
    out_axis = torch.tensor([1.0, 3.0, 4.0, 16.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    ms = torch.rand(5, 4, generator=g, dtype=torch.float64) + in_axis[:, None] * out_axis[None, :] * 0.01
    return in_axis, out_axis, ms


def test_soft_count_invariances() -> None:
    torch.manual_seed(0)
    a = torch.rand(17, dtype=torch.float64)
    s = soft_count(a)
    torch.testing.assert_close(soft_count(a * 7.3), s)  # scale invariant (exact up to fp64 rounding)
    torch.testing.assert_close(soft_count(a[torch.randperm(17)]), s)  # permutation invariant
    assert 0 < float(s) <= 17 + 1e-12
    torch.testing.assert_close(
        soft_count(torch.full((9,), 0.3, dtype=torch.float64)), torch.tensor(9.0, dtype=torch.float64)
    )
    one_hot = torch.zeros(10, dtype=torch.float64)
    one_hot[3] = 2.0
    torch.testing.assert_close(soft_count(one_hot), torch.tensor(10**0.5, dtype=torch.float64))


def test_soft_count_is_zero_with_zero_gradient_at_zero() -> None:
    a = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    s = soft_count(a)
    s.backward()
    assert float(s.detach()) == 0.0
    assert torch.equal(a.grad, torch.zeros(6, dtype=torch.float64))


def test_soft_count_gradcheck() -> None:
    a = (torch.rand(8, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(soft_count, (a,))


def test_bilinear_exact_at_grid_points() -> None:
    in_axis, out_axis, ms = _grid()
    for i, x in enumerate(in_axis):
        for j, y in enumerate(out_axis):
            v = bilinear_ms(x.clone(), y.clone(), in_axis, out_axis, ms)
            torch.testing.assert_close(v, ms[i, j], rtol=0, atol=1e-12)


def test_bilinear_matches_reference_formula_inside_a_cell() -> None:
    in_axis, out_axis, ms = _grid()
    x, y = torch.tensor(5.0, dtype=torch.float64), torch.tensor(10.0, dtype=torch.float64)
    # cell [4, 8] x [4, 16]
    tx, ty = (5 - 4) / 4, (10 - 4) / 12
    t1 = ms[2, 2] + (ms[3, 2] - ms[2, 2]) * tx
    t2 = ms[2, 3] + (ms[3, 3] - ms[2, 3]) * tx
    torch.testing.assert_close(
        bilinear_ms(x, y, in_axis, out_axis, ms), t1 + (t2 - t1) * ty, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("xy", [(1.5, 2.0), (3.3, 3.7), (8.5, 15.0), (6.1, 1.4)])
def test_bilinear_gradcheck(xy: tuple[float, float]) -> None:
    in_axis, out_axis, ms = _grid()
    x = torch.tensor(xy[0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor(xy[1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: bilinear_ms(a, b, in_axis, out_axis, ms), (x, y))


def test_bilinear_one_axis_grid_and_clamping() -> None:
    axis = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    ms = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)  # one output column
    one = torch.tensor([1.0], dtype=torch.float64)
    v = bilinear_ms(
        torch.tensor(2.5, dtype=torch.float64), torch.tensor(7.0, dtype=torch.float64), axis, one, ms
    )
    torch.testing.assert_close(v, torch.tensor(3.0, dtype=torch.float64))
    x = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)  # beyond the grid: held, no slope
    bilinear_ms(x, torch.tensor(1.0, dtype=torch.float64), axis, one, ms).backward()
    assert float(x.grad) == 0.0


def test_flops_term_with_all_ones_masks_is_dense_flops() -> None:
    a_in, a_out = torch.ones(16), torch.ones(32)
    k, h, w = 3, 5, 5
    assert float(flops_term(soft_count(a_in), soft_count(a_out), k * k * h * w)) == pytest.approx(
        16 * 32 * 9 * 25
    )


def test_batched_bilinear_equals_the_scalar_lookup_and_gradchecks() -> None:
    from edgetrim.compress.surrogate import bilinear_ms_batched

    in_axis, out_axis, ms = _grid()
    one_axis = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    one_ms = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    # pad both terms to (2, 5, 4)
    in_axes = torch.stack([in_axis, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)])
    out_axes = torch.stack([out_axis, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)])
    grids = torch.zeros(2, 5, 4, dtype=torch.float64)
    grids[0] = ms
    grids[1, :3, :1] = one_ms
    n_in, n_out = torch.tensor([5, 3]), torch.tensor([4, 1])
    x = torch.tensor([5.5, 2.25], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([9.0, 1.0], dtype=torch.float64, requires_grad=True)
    got = bilinear_ms_batched(x, y, in_axes, out_axes, grids, n_in, n_out)
    want = torch.stack(
        [
            bilinear_ms(x[0], y[0], in_axis, out_axis, ms),
            bilinear_ms(x[1], y[1], one_axis, torch.tensor([1.0], dtype=torch.float64), one_ms),
        ]
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    fn = lambda a, b: bilinear_ms_batched(a, b, in_axes, out_axes, grids, n_in, n_out)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, y))
