"""Every rule against a plain reference (tests/reference_rules.py), errors, and robustness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aggregation as A
from aggregation import AggregationError, aggregate
from aggregation import _columns as columns

from . import reference_rules as R

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def stacks(draw, min_n=1, max_n=11):
    """Random (n, d) stacks; some with rounded values (ties) and duplicated rows."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(n, d)) * draw(st.sampled_from([1.0, 10.0]))
    if draw(st.booleans()):
        x = np.round(x)  # many ties
    if n > 1 and draw(st.booleans()):
        x[rng.integers(0, n)] = x[rng.integers(0, n)]  # a duplicate row
    return x


def close(a, b, tol=1e-4):
    a = a.double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0))))


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def max_f(n, slack):
    return max(0, (n - slack) // 2)


# --- each rule against its reference ---------------------------------------------------


@SETTINGS
@given(stacks(), st.data())
def test_mean_weighted_and_plain(x, data):
    w = np.asarray(data.draw(st.lists(st.floats(0.1, 5.0), min_size=len(x), max_size=len(x))))
    close(aggregate("mean", t(x)).value, R.mean(x))
    close(aggregate("mean", t(x), t(w)).value, R.mean(x, w))


@SETTINGS
@given(stacks())
def test_median_matches_numpy_including_even_counts(x):
    out = aggregate("median", t(x), f=0)
    close(out.value, R.median(x))


def test_median_even_count_is_mean_of_middles_not_lower():
    x = torch.tensor([[1.0], [2.0], [10.0], [20.0]])
    assert aggregate("median", x).value.item() == 6.0


@SETTINGS
@given(stacks(), st.data())
def test_trimmed_mean(x, data):
    f = data.draw(st.integers(0, max_f(len(x), 1)))
    close(aggregate("trimmed_mean", t(x), f=f).value, R.trimmed_mean(x, f))


@SETTINGS
@given(stacks(), st.data())
def test_meamed(x, data):
    f = data.draw(st.integers(0, max_f(len(x), 1)))
    x = x.astype(np.float32).astype(np.float64)  # equal-distance ties must be exact in both
    close(aggregate("meamed", t(x), f=f).value, R.meamed(x, f))


@pytest.mark.parametrize("low, high", [(3, 3), (3, 2), (2, 2), (1, 3), (4, 1)])
def test_meamed_takes_the_smaller_values_on_an_exact_tie_whatever_the_batch(low, high):
    # NNM makes such columns: rows with the same nearest neighbours become equal. Every value is
    # as far from the median as some value on the other side; which window a rounded sum of
    # distances calls smaller depends on the order a reduction adds in (the batch's shape).
    rng = np.random.default_rng(low * 10 + high)
    p, q = np.sort(rng.normal(size=(2, 8, 300)).astype(np.float32) * 10, axis=0)
    rows = [p] * low + [q] * high
    order = rng.permutation(len(rows))
    stack = torch.from_numpy(np.stack([rows[i] for i in order], axis=1))  # (8, n, 300)
    n = low + high
    f = (n - 1) // 2
    k = n - f
    out = aggregate("meamed", stack, f=f).value
    if n % 2 == 0 and low == high:  # median (p + q) / 2: both windows tie, the first one is taken
        kept_low = min(low, k)
    else:  # the k values nearest the median: the median's side first, then the other's
        kept_low = min(low, k) if low > high else k - min(high, k)
    want = (kept_low * p.astype(np.float64) + (k - kept_low) * q) / k
    close(out, want, tol=1e-5)
    for i in range(len(stack)):
        assert torch.equal(aggregate("meamed", stack[i], f=f).value, aggregate("meamed", stack[i : i + 1], f=f).value[0])
        close(aggregate("meamed", stack[i], f=f).value, want[i], tol=1e-5)


@SETTINGS
@given(stacks(min_n=3), st.data())
def test_krum_picks_a_minimal_score_row(x, data):
    f = data.draw(st.integers(0, max(0, (len(x) - 3) // 2)))
    out = aggregate("krum", t(x), f=f)
    ref_scores = R.krum_scores(x, f)
    (best,) = out.report.selected
    assert ref_scores[best] <= ref_scores.min() + 1e-3 * max(1.0, ref_scores.max())
    close(out.value, x[best])
    close(np.array(out.report.scores), ref_scores, tol=1e-3)


@SETTINGS
@given(stacks(min_n=3), st.data())
def test_multi_krum_selects_the_best_scores(x, data):
    n = len(x)
    f = data.draw(st.integers(0, max(0, (n - 3) // 2)))
    m = data.draw(st.integers(1, n))
    out = aggregate("multi_krum", t(x), f=f, m=m)
    ref = R.krum_scores(x, f)
    sel = out.report.selected
    assert len(sel) == m
    kth = np.sort(ref)[m - 1]
    assert all(ref[i] <= kth + 1e-3 * max(1.0, ref.max()) for i in sel)
    close(out.value, x[sel].mean(axis=0))


def test_multi_krum_default_m_and_agreement_on_generic_input():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 50))
    out = aggregate("multi_krum", t(x), f=2)
    assert len(out.report.selected) == 7
    close(out.value, R.multi_krum(x, 2))


@SETTINGS
@given(st.integers(0, 2), st.integers(0, 10**6), st.integers(1, 8))
def test_bulyan_generic_input(f, seed, d):
    n = 4 * f + 3 + seed % 3
    x = np.random.default_rng(seed).normal(size=(n, d))
    got = aggregate("bulyan", t(x), f=f).value.double().numpy()
    assert any(np.allclose(got, ref, rtol=1e-4, atol=1e-4) for ref in R.bulyan_outcomes(x, f))


@SETTINGS
@given(stacks(min_n=1))
def test_geomed_reaches_the_reference_objective(x):
    out = aggregate("geomed", t(x), tol=1e-10, max_iter=500, nu=1e-9)
    ref = R.geomed(x)
    got = R.geomed_objective(x, out.value.double().numpy())
    best = R.geomed_objective(x, ref)
    assert got <= best * (1 + 1e-3) + 1e-3


@pytest.mark.parametrize("rows, median", [
    ([2, 6, 8, 12, 8, 15, -9], 8.0),  # the mean, 6, is a row but not the median: it used to stay there
    ([0, 0, 1, 2, 9], 1.0),
    ([1, 1, 1, 5], 1.0),  # the mean, 2, is no row; the median is one, held by three rows
    ([3, 3, 3], 3.0),  # every row on the start
])
def test_geomed_leaves_a_row_that_is_not_the_median(rows, median):
    x = t([[v] for v in rows])
    out = aggregate("geomed", x, tol=1e-10, max_iter=500, nu=1e-9)
    assert abs(out.value.item() - median) < 1e-4
    plane = torch.cat([x, torch.zeros_like(x)], dim=1)  # the same rows in two dimensions
    assert abs(aggregate("geomed", plane, tol=1e-10, max_iter=500, nu=1e-9).value[0].item() - median) < 1e-4


@SETTINGS
@given(stacks(), st.floats(0.05, 20.0), st.integers(1, 4))
def test_centered_clip_from_zero_matches_reference(x, tau, iters):
    out = aggregate("centered_clip", t(x), tau=tau, iters=iters, center="zero")
    close(out.value, R.centered_clip(x, tau, iters), tol=1e-3)


@SETTINGS
@given(stacks(min_n=2), st.data())
def test_self_centered_clip(x, data):
    n = len(x)
    own = data.draw(st.integers(0, n - 1))
    tau = data.draw(st.floats(0.05, 20.0))
    w = np.asarray(data.draw(st.lists(st.floats(0.1, 3.0), min_size=n, max_size=n)))
    out = aggregate("self_centered_clip", t(x), t(w), own=own, tau=tau)
    close(out.value, R.self_centered_clip(x, own, tau, w), tol=1e-3)


def test_self_centered_clip_default_radius_clips_the_2f_farthest():
    x = np.zeros((7, 3))
    x[1:, 0] = [1, 2, 3, 4, 50, 60]
    out = aggregate("self_centered_clip", t(x), f=1, own=0)
    assert out.report.details["tau"] == 4.0  # the 3rd farthest: the two farthest are clipped to it
    close(out.value, R.self_centered_clip(x, 0, 4.0))


@SETTINGS
@given(stacks(min_n=2, max_n=8), st.data())
def test_mda(x, data):
    f = data.draw(st.integers(0, max_f(len(x), 1)))
    out = aggregate("mda", t(x), f=f)
    _, best = R.mda(x, f)
    sel = out.report.selected
    diam = max((np.linalg.norm(x[i] - x[j]) for i in sel for j in sel), default=0.0)
    assert len(sel) == len(x) - f
    assert diam <= best * (1 + 1e-4) + 1e-4
    close(out.value, x[sel].mean(axis=0))


def test_mda_refuses_large_combinatorics_with_a_clear_error():
    with pytest.raises(AggregationError, match="C\\(60, 15\\)"):
        aggregate("mda", torch.randn(60, 4), f=15)


@SETTINGS
@given(stacks(min_n=2), st.data())
def test_nnm_then_mean_matches_reference(x, data):
    f = data.draw(st.integers(0, len(x) - 1))
    x = x + np.random.default_rng(0).normal(size=x.shape) * 1e-3  # no distance ties
    close(aggregate("nnm+mean", t(x), f=f).value, R.nnm(x, f).mean(axis=0), tol=1e-3)


@SETTINGS
@given(stacks(min_n=3), st.data())
def test_coordinate_rules_apply_the_mixing_per_block_like_the_reference(x, data):
    # median / trimmed mean / MeaMed take NNM's matrix and mix block by block (no mixed copy)
    f = data.draw(st.integers(0, (len(x) - 1) // 2))
    x = x + np.random.default_rng(1).normal(size=x.shape) * 1e-3
    mixed = R.nnm(x, f)
    close(aggregate("nnm+median", t(x), f=f).value, np.median(mixed, axis=0), tol=1e-3)
    close(aggregate("nnm+trimmed_mean", t(x), f=f).value, R.trimmed_mean(mixed, f), tol=1e-3)


def test_bucketing_uses_a_seeded_permutation():
    x = np.random.default_rng(3).normal(size=(7, 5))
    out = aggregate("median", t(x), pre=["bucketing"], bucket_size=2, seed=4)
    groups = out.report.pre[0]["buckets"]
    perm = [i for g in groups for i in g]
    assert sorted(perm) == list(range(7))
    close(out.value, np.median(R.bucketing(x, perm, 2), axis=0))
    again = aggregate("bucketing+median", t(x), bucket_size=2, seed=4)
    assert torch.equal(out.value, again.value)


# --- layout and numerics -------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 13, 32, 33])
@pytest.mark.parametrize("batch, d", [(1, 3 * 64 + 7), (2, 3 * 64 + 7), (7, 20)])
def test_column_sort_across_several_blocks(n, batch, d, monkeypatch):
    # long rows: three column blocks and a ragged last one; short rows: 3 batch entries a block
    monkeypatch.setattr(columns, "BLOCK_ELEMENTS", 64 * (n + 1))
    monkeypatch.setattr(columns, "MIN_COLUMNS", 60)
    x = torch.randn(batch, n, d)
    ranked = torch.empty_like(x)
    for batches, cols, block in columns.ranked_blocks(x):  # every rank: the whole sort
        ranked[batches, :, cols] = block.transpose(0, 1)
    assert torch.equal(ranked, x.sort(dim=1).values)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.data())
def test_pruned_networks_give_exactly_the_ranks_asked_for(n, data):
    lo = data.draw(st.integers(0, n - 1))
    hi = data.draw(st.integers(lo + 1, n))
    batch = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.integers(-3, 4, size=(batch, n, 50)).astype(np.float32))  # ties
    before = x.clone()
    got = columns.reduce_sorted(x, lambda b: b.sum(dim=0) * 1000 + b[0], lo, hi)
    assert torch.equal(x, before)  # the input rows are read in place, never written
    ref = x.sort(dim=1).values[:, lo:hi]
    assert torch.equal(got, ref.sum(dim=1) * 1000 + ref[:, 0])
    full, _ = columns.network(n, 0, n)
    assert len(columns.network(n, lo, hi)[0]) <= len(full)  # pruning only ever removes comparators


def test_krum_distances_survive_a_large_common_offset():
    # Rows far from the origin and close to each other: the uncentred float32 Gram form fails here.
    rng = np.random.default_rng(0)
    base = rng.normal(size=200_000) * 50
    x = base + rng.normal(size=(9, 200_000)) * 1e-2
    x[0] += 0.05  # a clear outlier at distance ~ 0.05 * sqrt(d)
    out = aggregate("krum", t(x), f=2)
    ref = R.krum_scores(x.astype(np.float32).astype(np.float64), 2)
    close(np.array(out.report.scores), ref, tol=2e-2)
    assert out.report.selected[0] != 0


def test_self_centered_clip_keeps_small_pulls_precise_far_from_the_origin():
    # models far from the origin that differ a little: the pulls are differences, never a
    # float32 sum of the rows minus the own row
    rng = np.random.default_rng(2)
    x = 300.0 + rng.normal(size=(7, 5000)) * 1e-3
    x32 = x.astype(np.float32).astype(np.float64)
    out = aggregate("self_centered_clip", t(x), own=2, tau=0.03)
    want = R.self_centered_clip(x32, 2, 0.03)
    assert np.abs(out.value.double().numpy() - want).max() < 1e-4 * np.abs(x32 - x32[2]).max() + 4e-5


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: aggregate("median", torch.empty(0, 3)), "empty"),
        (lambda: aggregate("median", torch.randn(4)), "shape"),
        (lambda: aggregate("mean", torch.randn(3, 2), torch.ones(4)), "3 rows"),
        (lambda: aggregate("mean", torch.tensor([[1.0], [float("nan")]])), "NaN"),
        (lambda: aggregate("mean", torch.tensor([[1.0], [float("inf")]])), "NaN or Inf"),
        (lambda: aggregate("mean", torch.randn(2, 2), torch.tensor([1.0, -1.0])), "non-negative"),
        (lambda: aggregate("krum", torch.randn(6, 2), f=2), "n > 2f \\+ 2"),
        (lambda: aggregate("bulyan", torch.randn(6, 2), f=1), "n >= 4f \\+ 3"),
        (lambda: aggregate("median", torch.randn(4, 2), f=2), "n > 2f"),
        (lambda: aggregate("median", torch.randn(4, 2), f=-1), ">= 0"),
        (lambda: aggregate("median", torch.randn(4, 2), f=1.5), "whole number"),
        (lambda: aggregate("medain", torch.randn(4, 2)), "unknown aggregation rule"),
        (lambda: aggregate("foo+median", torch.randn(4, 2)), "pre-aggregation"),
        (lambda: aggregate("median", torch.randn(4, 2), tau=1.0), "unknown parameter"),
        (lambda: aggregate("median", torch.randn(3, 2), torch.tensor([1.0, 2.0, 3.0])), "no weighted form"),
        (lambda: aggregate("multi_krum", torch.randn(6, 2), f=1, m=0), "m must be"),
        (lambda: aggregate("median", [[1.0]]), "torch.Tensor"),
        (lambda: aggregate("median", torch.tensor([[1, 2]])), "floating point"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(AggregationError, match=message):
        call()


def test_uniform_weights_are_accepted_by_unweighted_rules():
    x = torch.randn(5, 3)
    assert torch.equal(aggregate("median", x, torch.ones(5)).value, aggregate("median", x).value)


def test_every_rule_handles_a_single_row():
    x = torch.randn(1, 4)
    for rule in ["mean", "median", "trimmed_mean", "geomed", "centered_clip", "self_centered_clip",
                 "meamed", "mda"]:
        close(aggregate(rule, x).value, x[0].double().numpy())


def test_registry_lists_every_rule_with_a_requirement():
    assert set(A.RULES) == {"mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geomed",
                            "centered_clip", "self_centered_clip", "meamed", "mda", "secure_mean"}
    assert set(A.PRE_STEPS) == {"nnm", "bucketing"}
    assert all(A.REGISTRY[r].requirement for r in A.RULES)


def test_report_is_json_serialisable():
    import json
    x = torch.randn(9, 10)
    x[3] += 100.0  # a far outlier: Multi-Krum must leave it out
    out = aggregate("nnm+multi_krum", x, f=2)
    back = json.loads(json.dumps(out.report.to_dict()))  # the provenance log stores it as JSON
    assert back == out.report.to_dict()
    assert back["rule"] == "multi_krum" and back["pre"][0]["step"] == "nnm"
    assert len(back["selected"]) == 9 - 2 and 3 not in back["selected"]
    assert len(back["scores"]) == 9 and all(isinstance(v, float) for v in back["scores"])


# --- robustness ------------------------------------------------------------------------

ROBUST = [("median", 3, {}), ("trimmed_mean", 3, {}), ("krum", 3, {}), ("multi_krum", 3, {}),
          ("bulyan", 2, {}), ("geomed", 3, {}), ("meamed", 3, {}), ("mda", 3, {}),
          ("self_centered_clip", 3, {"own": 0}), ("centered_clip", 3, {"iters": 3}),
          ("nnm+trimmed_mean", 3, {}), ("nnm+krum", 3, {}), ("bucketing+median", 1, {"bucket_size": 2})]


@pytest.mark.parametrize("rule, f, params", ROBUST)
@pytest.mark.parametrize("attack", ["huge", "sign_flip_scaled"])
def test_outliers_within_tolerance_do_not_move_the_output_out_of_the_honest_ball(rule, f, params, attack):
    rng = np.random.default_rng(7)
    n, d = 11, 30
    honest = 1.0 + rng.normal(size=(n - f, d)) * 0.1
    bad = np.full((f, d), 1e6) if attack == "huge" else -100.0 * np.ones((f, d))
    x = np.vstack([honest, bad])
    out = aggregate(rule, t(x), f=f, **params).value.double().numpy()
    centre = honest.mean(axis=0)
    radius = np.linalg.norm(honest - centre, axis=1).max()
    assert np.linalg.norm(out - centre) <= 2 * radius, rule
    assert np.all(out >= honest.min(axis=0) - radius) and np.all(out <= honest.max(axis=0) + radius)
    plain = aggregate("mean", t(x)).value.double().numpy()
    assert np.linalg.norm(plain - centre) > 10 * radius


def test_report_names_the_outliers_krum_left_out():
    x = torch.ones(9, 4)
    x += torch.randn(9, 4) * 0.01
    x[[2, 5]] = 1e4
    rep = aggregate("multi_krum", x, f=2).report
    assert 2 not in rep.selected and 5 not in rep.selected
    assert math.isfinite(max(rep.scores))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stacks_are_aggregated_in_float32(dtype):
    x = torch.randn(7, 300)
    out = aggregate("median", x.to(dtype), f=2).value
    assert out.dtype == torch.float32
    assert torch.equal(out, x.to(dtype).float().median(dim=0).values)


def test_the_torch_free_catalogue_matches_the_rules_it_names():
    import inspect

    from aggregation import catalog, mda

    assert catalog.MAX_MDA_SUBSETS == mda.MAX_SUBSETS
    for rule in [*A.REGISTRY.values(), *A.PRE_REGISTRY.values()]:
        sig = inspect.signature(rule.fn)
        declared = [p for p, v in sig.parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "mix"]
        assert list(rule.params) == declared, rule.name
