"""The map math: Procrustes, deterministic completion of undetermined directions, and
invariance to the arbitrary sign and order choices of decompositions."""

from __future__ import annotations

import pytest
import torch

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, PrepareConfig
from theseus_ops.transport import maps as maps_module
from theseus_ops.transport.maps import MapOptions, estimate_space_map, pad_map, polar_factor
from theseus_ops.transport.statistics import SpaceStatistics


def _stats(xa: torch.Tensor, xb: torch.Tensor, gram: bool = False) -> SpaceStatistics:
    s = SpaceStatistics.empty(xa.shape[1], xb.shape[1], xa.device, gram)
    s.update(xa.float(), xb.float())
    return s


def _flipping_eigh(generator: torch.Generator):
    def eigh(m):
        vals, vecs = torch.linalg.eigh(m)
        signs = torch.where(torch.rand(vals.shape[0], generator=generator) < 0.5, -1.0, 1.0).to(vecs.dtype)
        return vals, vecs * signs

    return eigh


def test_polar_factor_recovers_rotation_and_is_semi_orthogonal():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 20, generator=gen, dtype=torch.float64).T)
    t = polar_factor(x.T @ (x @ q.T)).map  # widening 12 -> 20
    assert torch.allclose(t, q.T, atol=1e-10)
    assert torch.allclose(t @ t.T, torch.eye(12, dtype=torch.float64), atol=1e-10)


def test_undetermined_directions_are_filled_by_the_pad_prior_and_reported():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 10, generator=gen, dtype=torch.float64)  # 6 rows span only 6 of 10 directions
    result = polar_factor(x.T @ x, fill="pad")
    assert result.data_rank == 6 and result.prior_filled == 4 and result.seeded_filled == 0
    # identity data gives the identity map even where the data says nothing
    assert torch.allclose(result.map, torch.eye(10, dtype=torch.float64), atol=1e-8)


def test_zero_statistics_fall_back_to_pad_map():
    result = polar_factor(torch.zeros(4, 7, dtype=torch.float64), fill="pad")
    assert result.data_rank == 0
    assert torch.allclose(result.map, pad_map(4, 7), atol=1e-12)


def test_projected_map_drops_undetermined_directions_and_reports_them():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 10, generator=gen, dtype=torch.float64)  # 6 rows span only 6 of 10 directions
    result = polar_factor(x.T @ x, fill="project")
    assert result.data_rank == 6 and result.prior_filled == 0 and result.seeded_filled == 0
    # the identity on the rows' span, nothing elsewhere: the projector onto what the data saw
    q, _ = torch.linalg.qr(x.T)
    assert torch.allclose(result.map, q @ q.T, atol=1e-8)
    zero = torch.zeros(4, 7, dtype=torch.float64)
    assert torch.equal(polar_factor(zero, fill="project").map, zero)


@pytest.mark.parametrize("shape", [(9, 13), (13, 9)])
def test_projected_map_is_equivariant_under_orthogonal_transforms(shape):
    """Rank-deficient cross moments: T(Qᵀ C R) = Qᵀ T(C) R for orthogonal Q, R; the pad fill is not."""
    gen = torch.Generator().manual_seed(11)
    a, b = shape
    cross = torch.randn(a, 4, generator=gen, dtype=torch.float64) @ torch.randn(4, b, generator=gen,
                                                                                 dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(a, a, generator=gen, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(b, b, generator=gen, dtype=torch.float64))
    moved = polar_factor(q.T @ cross @ r, fill="project").map
    assert torch.allclose(moved, q.T @ polar_factor(cross, fill="project").map @ r, atol=1e-9)
    padded = polar_factor(q.T @ cross @ r, fill="pad").map
    assert not torch.allclose(padded, q.T @ polar_factor(cross, fill="pad").map @ r, atol=1e-3)


@pytest.mark.parametrize("fill", ["project", "pad"])
@pytest.mark.parametrize("rows", [200, 5])
def test_polar_factor_invariant_to_decomposition_choices(monkeypatch, rows, fill):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(rows, 9, generator=gen, dtype=torch.float64)
    cross = x.T @ (x @ torch.randn(9, 13, generator=gen, dtype=torch.float64))
    reference = polar_factor(cross, fill=fill).map
    monkeypatch.setattr(maps_module, "_eigh", _flipping_eigh(torch.Generator().manual_seed(4)))
    assert torch.allclose(polar_factor(cross, fill=fill).map, reference, atol=1e-9)


def _svd_pad_fill(cross: torch.Tensor, rank_tol: float = 1e-6, seed: int = 0) -> torch.Tensor:
    """The pad fill written directly with SVDs (the textbook form): the reference for both solvers."""
    a, b = cross.shape
    k = min(a, b)
    u, s, vh = torch.linalg.svd(cross, full_matrices=False)
    keep = s > rank_tol * s.max()
    left, right = u[:, keep], vh[keep].T
    result = left @ right.T
    for stage in (0, 1):
        if left.shape[1] >= k:
            break
        prior = pad_map(a, b) if stage == 0 else torch.randn(a, b, generator=torch.Generator().manual_seed(seed),
                                                             dtype=torch.float64)
        restricted = ((torch.eye(a, dtype=torch.float64) - left @ left.T) @ prior
                      @ (torch.eye(b, dtype=torch.float64) - right @ right.T))
        u2, s2, vh2 = torch.linalg.svd(restricted, full_matrices=False)
        n = min(int((s2 > 1e-3 * s2.max()).sum()), k - left.shape[1])
        result = result + u2[:, :n] @ vh2[:n]
        left, right = torch.cat([left, u2[:, :n]], 1), torch.cat([right, vh2[:n].T], 1)
    return result


@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (16, 16)])
@pytest.mark.parametrize("rank", [16, 5, 0])
def test_pad_fill_from_eigendecompositions_equals_the_svd_form(shape, rank):
    """Full rank, rank-deficient (prior fill) and empty statistics, widening, narrowing and square, with a
    spread of singular values down to 1e-5 of the largest: the eigh route gives the SVD route's map to 1e-6
    (squaring the condition costs that direction's precision, far below the 1e-2 relative noise a float32
    statistic leaves at 1e-5 of the largest singular value), with rows orthonormal to rounding."""
    gen = torch.Generator().manual_seed(12)
    a, b = shape
    r = min(rank, a, b)
    scales = torch.logspace(0, -5, max(r, 1), dtype=torch.float64)[:r]
    cross = (torch.linalg.qr(torch.randn(a, a, generator=gen, dtype=torch.float64))[0][:, :r] * scales
             @ torch.linalg.qr(torch.randn(b, b, generator=gen, dtype=torch.float64))[0][:, :r].T)
    result = polar_factor(cross, fill="pad")
    assert result.data_rank == r and result.data_rank + result.prior_filled + result.seeded_filled == min(a, b)
    torch.testing.assert_close(result.map, _svd_pad_fill(cross), atol=1e-6, rtol=0)
    torch.testing.assert_close(polar_factor(cross, fill="pad", solver="svd").map, _svd_pad_fill(cross),
                               atol=1e-12, rtol=0)
    k = min(a, b)
    gram = result.map @ result.map.T if a <= b else result.map.T @ result.map
    torch.testing.assert_close(gram, torch.eye(k, dtype=torch.float64), atol=1e-9, rtol=0)


def test_whitened_and_centered_maps_still_recover_a_permutation():
    gen = torch.Generator().manual_seed(4)
    xa = torch.randn(400, 8, generator=gen) * torch.linspace(0.1, 3.0, 8) + 2.0
    perm = torch.randperm(8, generator=gen)
    xb = xa[:, perm]
    expected = torch.eye(8)[:, perm]
    for options in (MapOptions(center=True), MapOptions(whiten_power=0.5), MapOptions(center=True, whiten_power=0.25)):
        t, quality = estimate_space_map(_stats(xa, xb, gram=options.needs_gram), "s", options)
        assert torch.allclose(t, expected, atol=1e-4), options
        assert quality.residual < 1e-3  # the residual's resolution (SpaceQuality docstring)


def test_quality_reports_residual_and_rank():
    gen = torch.Generator().manual_seed(5)
    xa, xb = torch.randn(50, 6, generator=gen), torch.randn(50, 6, generator=gen)
    _t, q = estimate_space_map(_stats(xa, xb), "unrelated", MapOptions())
    assert 0.5 < q.residual < 1.5 and q.data_rank == 6 and not q.underdetermined
    _t, q = estimate_space_map(_stats(xa[:4], xb[:4]), "few", MapOptions())
    assert q.underdetermined and q.data_rank == 4


def test_map_options_validate():
    with pytest.raises(ValueError, match="whiten_power"):
        MapOptions(whiten_power=0.7)
    with pytest.raises(ValueError, match="solver must be one of eigh, svd"):
        MapOptions(solver="qr")


def test_data_free_maps_invariant_to_eigenvector_signs(tmp_path, monkeypatch):
    """End to end: flipping the signs (and order) of every decomposition leaves the maps unchanged."""
    case = tiny.Case(tmp_path, "llama", "widening")
    cfg = PrepareConfig(str(case.source), str(case.target), method="theseus-data-free", whiten_power=0.25)
    reference = api.prepare(cfg, tmp_path / "a.alignment")
    monkeypatch.setattr(maps_module, "_eigh", _flipping_eigh(torch.Generator().manual_seed(8)))
    flipped = api.prepare(cfg, tmp_path / "b.alignment")
    assert reference.maps.keys() == flipped.maps.keys() and len(reference.maps) > 10
    for key in reference.maps:
        torch.testing.assert_close(flipped.maps[key], reference.maps[key], atol=1e-5, rtol=0)


def test_rank_tolerance_is_an_option_and_is_reported(tmp_path):
    case = tiny.Case(tmp_path, "llama", "identity")
    calibration = CalibrationSpec(str(case.calibration))
    strict = api.prepare(PrepareConfig(str(case.source), str(case.target), calibration), tmp_path / "a.align")
    loose = api.prepare(PrepareConfig(str(case.source), str(case.target), calibration, rank_tol=0.5, fill="pad"),
                        tmp_path / "b.align")
    assert loose.provenance["options"]["rank_tol"] == 0.5 and loose.provenance["options"]["fill"] == "pad"
    assert strict.provenance["options"]["fill"] == "weights"  # the default
    hidden_strict, hidden_loose = strict.quality["layers.0.mlp_hidden"], loose.quality["layers.0.mlp_hidden"]
    assert hidden_strict["data_rank"] == 64 and hidden_loose["data_rank"] < 64
    assert hidden_loose["data_rank"] + hidden_loose["prior_filled"] + hidden_loose["seeded_filled"] == 64
    # identity data: the prior fills the rest with the identity too, so the map stays exact
    torch.testing.assert_close(loose.maps["layers.0.mlp_hidden"], torch.eye(64), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("tokens_in", "tokens", "layout"), [(197, 226, "cls_grid"), (197, 50, "cls_grid"),
                                                             (20, 31, "sequence"), (31, 20, "sequence")])
def test_token_resampling_as_one_matrix_equals_interpolating_the_activations(tokens_in, tokens, layout):
    """ViT grids of another patch count and texts of another length: the cached resampling matrix gives
    what interpolating each site's activations gave (CLS kept, bilinear grid; or linear)."""
    from theseus_ops.transport import statistics

    acts = torch.randn(3, tokens_in, 8, generator=torch.Generator().manual_seed(13))
    direct = statistics._interpolate_tokens(acts, tokens, layout)
    assert direct.shape == (3, tokens, 8)
    torch.testing.assert_close(statistics._resample_tokens(acts, tokens, layout), direct, atol=1e-5, rtol=0)
    if layout == "cls_grid":
        assert torch.equal(statistics._resample_tokens(acts, tokens, layout)[:, 0], acts[:, 0])


def test_float64_statistics_lower_the_permutation_oracle_floor(tmp_path):
    """``precision=float64`` takes the per-batch products in float64: the cross moment is then the float64
    product of the rows, and the permutation oracle's error falls below the float32 products' (measured
    2-10x on every tiny family, BENCHMARKS.md §1b). The choice is recorded in the provenance."""
    from safetensors.torch import load_file

    from theseus_ops.config import TransportConfig

    gen = torch.Generator().manual_seed(3)
    xa, xb = torch.randn(300, 16, generator=gen) * 1e3, torch.randn(300, 24, generator=gen)
    stats = SpaceStatistics.empty(16, 24, torch.device("cpu"), with_gram=False, precise=True)
    stats.update(xa, xb)
    assert torch.equal(stats.cross, xa.double().T @ xb.double())
    case = tiny.Case(tmp_path, "xlm-roberta", "permutation")
    errors = {}
    for precision in ("float32", "float64"):
        aligned = tmp_path / f"{precision}.alignment"
        calibration = CalibrationSpec(str(case.calibration))
        alignment = api.prepare(PrepareConfig(str(case.source), str(case.target), calibration, precision=precision,
                                              device="cpu"), aligned)
        assert alignment.provenance["options"]["precision"] == precision
        cfg = TransportConfig(str(case.source), str(case.target), "theseus", task_vector=str(case.task_vector),
                              alignment=str(aligned), device="cpu")
        out = tmp_path / f"{precision}.safetensors"
        api.transport(cfg, out)
        errors[precision] = case.error(load_file(str(out)))
    assert errors["float64"] < errors["float32"] < 1e-4
    with pytest.raises(Exception, match="precision"):
        MapOptions(precision="float16")
