"""The NLL evaluation: every term or an unbiased estimate from K random timesteps, its split and its record."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from ddpm_studio.core.evaluation.likelihood import (
    LikelihoodProgress,
    LikelihoodRequest,
    LikelihoodResult,
    evaluate_likelihood,
    timestep_columns,
)
from ddpm_studio.core.model import store as model_store
from tests.helpers.images import tiny_images


def run(model, images, **options) -> tuple[list[LikelihoodProgress], LikelihoodResult]:
    *progress, result = evaluate_likelihood(model, images, LikelihoodRequest(**options))
    return progress, result


def test_every_timestep_gives_the_split_the_per_t_curve_and_progress(tiny_model):
    model = model_store.load_model(tiny_model)
    T = model.diffusion.num_timesteps
    progress, result = run(model, tiny_images(6, seed=2), num_images=None, batch_size=4)
    assert [p.done for p in progress] == [4 * (i + 1) for i in range(T)] + [4 * T + 2 * (i + 1) for i in range(T)]
    assert progress[-1].total == 6 * T and np.isfinite(result.per_timestep_bpd).all()
    assert result.num_images == 6 and result.per_image_bpd.shape == (6,)
    # the split adds up, and the per-t curve holds the same terms: L_0 at t = 1, the KLs after it
    assert result.bits_per_dim == pytest.approx(result.decoder_bpd + result.kl_bpd + result.prior_bpd)
    assert result.decoder_bpd == pytest.approx(result.per_timestep_bpd[0])
    assert result.kl_bpd == pytest.approx(result.per_timestep_bpd[1:].sum())
    assert result.standard_error == pytest.approx(result.per_image_bpd.std(ddof=1) / math.sqrt(6))
    assert 0 < result.prior_bpd < 1e-3 and (result.per_timestep_bpd > 0).all()


def test_k_random_timesteps_estimate_the_full_bound_without_bias(tiny_model):
    model = model_store.load_model(tiny_model)
    images = tiny_images(2, seed=3)
    full = np.mean([run(model, images, seed=seed)[1].bits_per_dim for seed in range(2)])
    estimates = np.array([run(model, images, timesteps=3, seed=seed)[1].bits_per_dim for seed in range(20)])
    standard_error = estimates.std(ddof=1) / math.sqrt(len(estimates))
    # A coarse check (the standard error is about 10% of the bound): it catches a missing or wrong (T - 1) / K.
    assert abs(estimates.mean() - full) < 4 * standard_error + 0.01, (estimates.mean(), full, standard_error)
    # a sampled estimate keeps L_0 exact: the same noise gives the same decoder term
    assert run(model, images, timesteps=4)[1].decoder_bpd == pytest.approx(run(model, images)[1].decoder_bpd)


def test_timestep_columns_put_l0_first_then_distinct_t_above_one():
    columns = timestep_columns(5, 50, 7, torch.Generator().manual_seed(0))
    assert columns.shape == (5, 8) and (columns[:, 0] == 0).all()
    for row in columns[:, 1:]:
        assert len(set(row.tolist())) == 7 and row.min() >= 1 and row.max() <= 49
    assert timestep_columns(2, 10, None, torch.Generator()).tolist() == [list(range(10))] * 2


@pytest.mark.parametrize("options,fragment", [
    (dict(timesteps=0), "between 1 and 49"),
    (dict(timesteps=50), "between 1 and 49"),
    (dict(num_images=0), "at least 1 image"),
    (dict(variance="learned"), "did not learn its variance"),
])
def test_impossible_settings_are_one_sentence(tiny_model, options, fragment):
    model = model_store.load_model(tiny_model)
    with pytest.raises(ValueError, match=fragment):
        run(model, tiny_images(2), **options)


def test_append_evaluation_keeps_the_rest_of_model_json(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    before = model_store.read_model_info(folder)
    record = {"metric": "nll_bpd", "value": 5.25, "n": 4, "data": "/d", "date": "2026-01-01T00:00:00+00:00",
              "standard_error": 0.5, "L_0": 3.0, "sum_L_t-1": 2.25, "L_T": 0.0, "timesteps": "all"}
    model_store.append_evaluation(folder, record)
    model_store.append_evaluation(folder, {"metric": "fid", "value": 31.5, "n": 100, "data": "/d", "date": "x"})
    after = model_store.read_model_info(folder)
    assert model_store.evaluations(after) == [record, {"metric": "fid", "value": 31.5, "n": 100, "data": "/d",
                                                       "date": "x"}]
    assert after.to_json() | {"evaluations": None} == before.to_json() | {"evaluations": None}
    assert model_store.describe_evaluation(record).startswith("NLL 5.250 ± 0.500 bits/dim (L_0 3.000")
    assert model_store.describe_evaluation(model_store.evaluations(after)[1]).startswith("FID 31.5; 100 samples, /d")
    with pytest.raises(ValueError, match="needs 'date'"):
        model_store.append_evaluation(folder, {"metric": "x", "value": 1, "n": 1, "data": "d"})
