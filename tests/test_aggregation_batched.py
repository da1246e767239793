"""A batch of stacks (B, n, d) aggregates as B separate (n, d) calls would, for every rule
and pre-step, and each entry matches the plain reference (tests/reference_rules.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregation import RULES, AggregationError, BatchReport, Report, aggregate, presteps, tolerates
from aggregation import _columns as columns
from aggregation import _kernels as kernels

from . import reference_rules as R

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# rule spec -> (smallest n, extra params drawn from (n, draw))
CASES = {
    "mean": (1, lambda n, draw: {}),
    "median": (1, lambda n, draw: {}),
    "trimmed_mean": (1, lambda n, draw: {}),
    "meamed": (1, lambda n, draw: {}),
    "krum": (3, lambda n, draw: {}),
    "multi_krum": (3, lambda n, draw: {"m": draw(st.integers(1, n))}),
    "bulyan": (3, lambda n, draw: {}),
    "geomed": (1, lambda n, draw: {"max_iter": draw(st.integers(1, 30))}),
    "centered_clip": (1, lambda n, draw: {"iters": draw(st.integers(1, 3)),
                                             "center": draw(st.sampled_from(["median", "mean", "zero", 0])),
                                             **draw(st.sampled_from([{}, {"tau": 1.5}]))}),
    "self_centered_clip": (1, lambda n, draw: {"own": draw(st.integers(0, n - 1)),
                                                  **draw(st.sampled_from([{}, {"tau": 0.7}]))}),
    "mda": (1, lambda n, draw: {}),
    "nnm+mean": (1, lambda n, draw: {}),
    "nnm+median": (1, lambda n, draw: {}),
    "nnm+trimmed_mean": (1, lambda n, draw: {}),
    "nnm+krum": (3, lambda n, draw: {}),
    "nnm+meamed": (1, lambda n, draw: {}),
    "bucketing+median": (1, lambda n, draw: {"bucket_size": draw(st.integers(1, 3)),
                                                "seed": draw(st.integers(0, 5))}),
    "bucketing+mean": (1, lambda n, draw: {"bucket_size": draw(st.integers(1, 3))}),
    "nnm+bucketing+trimmed_mean": (2, lambda n, draw: {"bucket_size": 2}),
}


def takes_weights(spec: str) -> bool:
    rule = spec.split("+")[-1]
    return rule in {"mean", "multi_krum", "geomed", "centered_clip", "self_centered_clip", "mda"}


def batch_of_stacks(draw, min_n: int, max_n: int = 9, ties: bool = True) -> np.ndarray:
    """(B, n, d) with B in 1..4; some with rounded values (ties) and a duplicated row."""
    b = draw(st.integers(1, 4))
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(b, n, d)) * draw(st.sampled_from([1.0, 10.0]))
    if ties and draw(st.booleans()):
        x = np.round(x)  # many ties
    if n > 1 and draw(st.booleans()):
        x[:, rng.integers(0, n)] = x[:, rng.integers(0, n)]  # a duplicate row in every entry
    return x


def largest_f(spec: str, n: int, params: dict) -> int:
    """The largest f the rule tolerates on the rows it sees (fewer after bucketing)."""
    *pre, rule = spec.split("+")
    seen = math.ceil(n / params["bucket_size"]) if "bucketing" in pre else n
    return max(f for f in range(n) if f == 0 or (tolerates(spec, n, f) and tolerates(rule, seen, f)))


def assert_same_report(got: dict, want: dict, path: str = "report") -> None:
    """Equal structure and exact integers/strings/selections; floats equal to rounding."""
    assert type(got) is type(want) or {type(got), type(want)} <= {int, float}, path
    if isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for k in want:
            assert_same_report(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_report(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5) or (math.isinf(got) and got == want), path
    else:
        assert got == want, path


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


@pytest.mark.parametrize("spec", list(CASES))
def test_a_batch_equals_separate_calls(spec):
    min_n, extra = CASES[spec]

    # After NNM mixes rows (each the mean of its nearest ones), rows with the same nearest rows
    # are equal, up to rounding that differs with the batch's shape (torch.bmm rounds an entry
    # by its alignment). Krum may pick any of them: nnm+krum's selection is checked up to rows
    # NNM made equal, on inputs without other exact ties, and with f = 0 (every row becomes
    # the same mean) on values alone. (MeaMed decides such ties exactly: it takes tied inputs.)
    mixed_selection = spec == "nnm+krum"

    def report_of(agg, stack, f) -> dict:
        got = agg.to_dict()
        if mixed_selection:  # the first of the rows equal to the one Krum picked
            mix = presteps.nnm(stack[None], None, f=f)[0][0]
            got["selected"] = [next(j for j in range(len(mix)) if torch.equal(mix[j], mix[k]))
                               for k in got["selected"]]
        return got

    @SETTINGS
    @given(st.data())
    def check(data):
        x = t(batch_of_stacks(data.draw, min_n, ties=not mixed_selection))
        b, n, _ = x.shape
        params = extra(n, data.draw)
        params["f"] = data.draw(st.integers(0, largest_f(spec, n, params)), label="f")
        reports = not (mixed_selection and params["f"] == 0)
        weights = None
        if takes_weights(spec):
            kind = data.draw(st.sampled_from(["none", "shared", "per entry"]), label="weights")
            if kind == "shared":
                weights = t(data.draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n)))
            elif kind == "per entry":
                weights = t(np.random.default_rng(n).uniform(0.1, 5.0, size=(b, n)))
        out = aggregate(spec, x, weights, **params)
        assert out.value.shape == (b, x.shape[2]) and isinstance(out.report, BatchReport) and len(out.report) == b
        assert len(out.report.to_dict()) == b
        per_entry = [None if weights is None else weights if weights.dim() == 1 else weights[i] for i in range(b)]
        for i in range(b):
            alone = aggregate(spec, x[i], per_entry[i], **params)
            torch.testing.assert_close(out.value[i], alone.value, rtol=1e-5, atol=1e-5)
            assert isinstance(alone.report, Report)
            if reports:
                assert_same_report(report_of(out.report[i], x[i], params["f"]),
                                   report_of(alone.report, x[i], params["f"]))
                assert out.report.to_dict()[i] == out.report[i].to_dict()

    check()


def close(a, b, tol=1e-4):
    a = a.double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0))))


# each entry of a batch against the plain reference: (spec, smallest n, f bound, check(x, f, out, i))
def _krum(x, f, out, i):
    ref = R.krum_scores(x, f)
    (best,) = out.report[i].selected
    assert ref[best] <= ref.min() + 1e-3 * max(1.0, ref.max())
    close(out.value[i], x[best])


def _multi_krum(x, f, out, i):
    sel = out.report[i].selected
    close(out.value[i], x[sel].mean(axis=0))
    ref = R.krum_scores(x, f)
    assert all(ref[j] <= np.sort(ref)[len(x) - f - 1] + 1e-3 * max(1.0, ref.max()) for j in sel)


def _geomed(x, f, out, i):
    got = R.geomed_objective(x, out.value[i].double().numpy())
    assert got <= R.geomed_objective(x, R.geomed(x)) * (1 + 1e-3) + 1e-3


def _mda(x, f, out, i):
    sel = out.report[i].selected
    diam = max((np.linalg.norm(x[a] - x[c]) for a in sel for c in sel), default=0.0)
    assert diam <= R.mda(x, f)[1] * (1 + 1e-4) + 1e-4
    close(out.value[i], x[sel].mean(axis=0))


REFERENCE = [
    ("mean", 1, lambda n: 0, {}, lambda x, f, out, i: close(out.value[i], R.mean(x))),
    ("median", 1, lambda n: 0, {}, lambda x, f, out, i: close(out.value[i], R.median(x))),
    ("trimmed_mean", 1, lambda n: (n - 1) // 2, {},
     lambda x, f, out, i: close(out.value[i], R.trimmed_mean(x, f))),
    ("meamed", 1, lambda n: (n - 1) // 2, {}, lambda x, f, out, i: close(out.value[i], R.meamed(x, f))),
    ("krum", 3, lambda n: (n - 3) // 2, {}, _krum),
    ("multi_krum", 3, lambda n: (n - 3) // 2, {}, _multi_krum),
    ("bulyan", 3, lambda n: (n - 3) // 4, {},
     lambda x, f, out, i: any(np.allclose(out.value[i].double().numpy(), r, rtol=1e-4, atol=1e-4)
                              for r in R.bulyan_outcomes(x, f)) or pytest.fail("bulyan")),
    ("geomed", 1, lambda n: 0, {"tol": 1e-10, "max_iter": 500, "nu": 1e-9}, _geomed),
    ("centered_clip", 1, lambda n: 0, {"tau": 2.0, "iters": 2, "center": "zero"},
     lambda x, f, out, i: close(out.value[i], R.centered_clip(x, 2.0, 2), tol=1e-3)),
    ("self_centered_clip", 1, lambda n: 0, {"tau": 1.0},
     lambda x, f, out, i: close(out.value[i], R.self_centered_clip(x, 0, 1.0), tol=1e-3)),
    ("mda", 1, lambda n: (n - 1) // 2, {}, _mda),
    ("nnm+mean", 1, lambda n: n - 1, {}, lambda x, f, out, i: close(out.value[i], R.nnm(x, f).mean(axis=0), 1e-3)),
    ("nnm+trimmed_mean", 1, lambda n: (n - 1) // 2, {},
     lambda x, f, out, i: close(out.value[i], R.trimmed_mean(R.nnm(x, f), f), 1e-3)),
    ("bucketing+median", 1, lambda n: 0, {"bucket_size": 2, "seed": 3},
     lambda x, f, out, i: close(out.value[i], np.median(
         R.bucketing(x, [j for g in out.report[i].pre[0]["buckets"] for j in g], 2), axis=0))),
]


@pytest.fixture(params=["compiled", "torch"])
def path(request, monkeypatch):
    """Each rule on both its paths: the C kernels reading rows in place, and torch/numpy."""
    if request.param == "compiled" and not kernels.available():
        pytest.skip("no C compiler: the aggregation kernels are not built")
    if request.param == "torch":
        monkeypatch.setitem(kernels._state, "lib", None)
    return request.param


@pytest.mark.parametrize("spec, min_n, f_bound, params, check", REFERENCE, ids=[r[0] for r in REFERENCE])
def test_each_entry_of_a_batch_matches_the_reference(spec, min_n, f_bound, params, check, path):
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def run(data):
        x = batch_of_stacks(data.draw, min_n, max_n=8)
        if spec.startswith("nnm"):
            x = x + np.random.default_rng(0).normal(size=x.shape) * 1e-3  # no distance ties
        x = x.astype(np.float32).astype(np.float64)  # the reference sees the float32 values
        f = data.draw(st.integers(0, f_bound(x.shape[1])), label="f")
        out = aggregate(spec, t(x), f=f, **params)
        for i in range(len(x)):
            check(x[i], f, out, i)

    run()


# --- the batch as a whole ---------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_a_batch_of_one_is_the_single_stack_call(rule):
    x = torch.randn(7, 30)
    one = aggregate(rule, x[None], f=1)
    alone = aggregate(rule, x, f=1)
    assert torch.equal(one.value[0], alone.value)
    assert one.report[0].to_dict() == alone.report.to_dict()


def test_shared_weights_equal_the_same_weights_per_entry():
    x, w = torch.randn(5, 6, 4), torch.rand(6) + 0.1
    shared = aggregate("multi_krum", x, w, f=1)
    repeated = aggregate("multi_krum", x, w.expand(5, 6), f=1)
    assert torch.equal(shared.value, repeated.value)
    assert shared.report.to_dict() == repeated.report.to_dict()


def test_per_entry_radius_and_iterations_are_reported_per_entry():
    x = torch.randn(3, 7, 5)
    x[1] *= 100  # a different scale: a different radius
    rep = aggregate("self_centered_clip", x, f=1).report
    taus = [rep[i].details["tau"] for i in range(3)]
    assert taus[1] > 10 * max(taus[0], taus[2])
    geo = aggregate("geomed", torch.cat([torch.zeros(1, 5, 3), torch.randn(1, 5, 3)]), max_iter=50).report
    assert geo[0].details["iterations"] < geo[1].details["iterations"]  # equal rows settle at once


def test_batched_reports_index_and_serialise():
    out = aggregate("nnm+multi_krum", torch.randn(4, 9, 10), f=2)
    rep = out.report
    assert len(rep) == 4 and len(rep.to_dict()) == 4
    assert rep[-1].to_dict() == rep[3].to_dict()
    assert [r.to_dict() for r in rep] == rep.to_dict()
    json.dumps(rep.to_dict())
    assert all(len(r.selected) == 7 and r.pre[0]["step"] == "nnm" for r in rep)
    with pytest.raises(IndexError):
        rep[4]


def test_krum_rejects_a_different_outlier_in_each_entry():
    x = torch.ones(3, 9, 4) + torch.randn(3, 9, 4) * 0.01
    for i, bad in enumerate([2, 5, 8]):
        x[i, bad] = 1e4
    rep = aggregate("multi_krum", x, f=1).report
    for i, bad in enumerate([2, 5, 8]):
        assert bad not in rep[i].selected and len(rep[i].selected) == 8


def test_centered_clip_takes_one_centre_per_entry():
    x, centre = torch.randn(3, 6, 4), torch.randn(3, 4)
    out = aggregate("centered_clip", x, center=centre, tau=0.5)
    for i in range(3):
        torch.testing.assert_close(out.value[i], aggregate("centered_clip", x[i], center=centre[i], tau=0.5).value)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: aggregate("median", torch.randn(2, 0, 3)), "empty"),
        (lambda: aggregate("median", torch.randn(2, 3, 4, 5)), "shape"),
        (lambda: aggregate("mean", torch.randn(2, 3, 2), torch.ones(2, 4)), "\\(3,\\) or \\(2, 3\\)"),
        (lambda: aggregate("mean", torch.randn(2, 3, 2), torch.ones(4)), "3 rows"),
        (lambda: aggregate("mean", torch.randn(2, 3, 2), torch.tensor([[1.0, 1, 1], [0, 0, 0]])),
         "batch entries \\[1\\]"),
        (lambda: aggregate("mean", torch.randn(2, 3, 2), torch.tensor([[1.0, 1, 1], [1, -1, 1]])),
         "batch entries \\[1\\] have negative"),
        (lambda: aggregate("median", torch.tensor([[[1.0], [2.0]], [[3.0], [float("nan")]]])), "\\(1, 1\\)"),
        (lambda: aggregate("krum", torch.randn(3, 6, 2), f=2), "n > 2f \\+ 2"),
        (lambda: aggregate("median", torch.randn(2, 3, 2), torch.tensor([[1.0, 1, 1], [1, 2, 1]])),
         "no weighted form"),
        (lambda: aggregate("centered_clip", torch.randn(2, 3, 2), center=torch.zeros(3, 2)), "center"),
        (lambda: aggregate("mda", torch.randn(2, 60, 4), f=15), "C\\(60, 15\\)"),
    ],
)
def test_bad_batched_input_is_a_clear_error(call, message):
    with pytest.raises(AggregationError, match=message):
        call()


def test_uniform_weights_per_entry_are_accepted_by_unweighted_rules():
    x = torch.randn(2, 5, 3)
    w = torch.tensor([[2.0] * 5, [0.5] * 5])
    assert torch.equal(aggregate("median", x, w).value, aggregate("median", x).value)


# --- the trimmed mean's selection network ------------------------------------------


def sorted_trimmed_mean(x: torch.Tensor, f: int) -> torch.Tensor:
    """The plain reference: sort each column, drop f per side, sum, divide."""
    kept = x.sort(dim=1).values[:, f : x.shape[1] - f]
    return kept.sum(dim=1) / kept.shape[1]


@st.composite
def hostile_columns(draw):
    """(B, n, d) of small integers (sums exact in float32, so any summation order agrees), many
    ties, and up to f values of +-1e30 per side in a column, f, and block sizes that cut the
    stack into several blocks (whole entries, or parts of a long row)."""
    n = draw(st.integers(1, 33))
    f = draw(st.integers(0, (n - 1) // 2))
    b, d = draw(st.integers(1, 5)), draw(st.integers(1, 70))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-draw(st.sampled_from([1, 3, 1000])), 1001, size=(b, n, d)).astype(np.float32)
    for sign in (1.0, -1.0):
        count = rng.integers(0, f + 1, size=(b, d))  # outliers per column on this side
        for k in range(f):
            rows = rng.integers(0, n, size=(b, d))
            hit = k < count
            x[np.nonzero(hit)[0], rows[hit], np.nonzero(hit)[1]] = sign * 1e30
    return torch.from_numpy(x), f, draw(st.sampled_from([(1 << 19, 1 << 14), (64, 8), (300, 16)]))


@SETTINGS
@given(hostile_columns())
def test_selection_network_trimmed_mean_equals_the_sorted_one(case):
    x, f, (block, min_cols) = case
    before = x.clone()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(columns, "BLOCK_ELEMENTS", block)
        mp.setattr(columns, "MIN_COLUMNS", min_cols)
        got = aggregate("trimmed_mean", x, f=f).value
        direct = columns.trimmed_mean_columns(x, f)
    assert torch.equal(x, before)  # the input rows are read in place, never written
    want = sorted_trimmed_mean(x, f)
    assert torch.equal(got, want) and torch.equal(direct, want)
    assert got.abs().max() <= 1000  # every 1e30 trimmed: none absorbed an honest value


@SETTINGS
@given(st.integers(1, 40), st.data())
def test_selection_network_keeps_exactly_the_middle_values(n, data):
    # the kept rows, sorted, are ranks f..n-f-1 exactly (ties: any of equal values may go)
    f = data.draw(st.integers(0, (n - 1) // 2))
    steps, rows = columns.trimming_network(n, f)
    x = torch.from_numpy(np.random.default_rng(n * 41 + f).integers(-2, 3, size=(3, n, 20)).astype(np.float32))
    kept = [torch.from_numpy(np.stack([r[k] for k in rows], axis=1).copy())
            for _, _, r in columns._network_blocks(x, steps, n + 1, None)]
    assert torch.equal(torch.cat(kept).sort(dim=1).values, x.sort(dim=1).values[:, f : n - f])
    middle, _ = columns.network(n, f, n - f)
    assert columns._cost((steps, rows)) <= columns._cost(columns.network(n, f, n - f))
    assert len(steps) <= len(middle)  # never more comparators than the sorted middle's network


@SETTINGS
@given(hostile_columns(), st.data())
def test_selection_network_applies_a_mixing_matrix_per_block(case, data):
    # a permutation per entry: mix @ stack is exact (and keeps <= f outliers a side), so the
    # fused path must equal the reference exactly
    x, f, (block, min_cols) = case
    b, n = x.shape[:2]
    seed = data.draw(st.integers(0, 2**32 - 1))
    perm = torch.from_numpy(np.argsort(np.random.default_rng(seed).random((b, n)), axis=1))
    mix = torch.zeros(b, n, n).scatter_(2, perm[:, :, None], 1.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(columns, "BLOCK_ELEMENTS", block)
        mp.setattr(columns, "MIN_COLUMNS", min_cols)
        got = columns.trimmed_mean_columns(x, f, mix=mix)
    assert torch.equal(got, sorted_trimmed_mean(torch.bmm(mix, x), f))


# --- rows read in place (aggregation._kernels) ------------------------------------------

ROW_RULES = ["mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "self_centered_clip",
             "nnm+trimmed_mean", "nnm+median", "nnm+krum", "bucketing+median", "meamed"]


@pytest.mark.skipif(not kernels.available(), reason="no C compiler: the aggregation kernels are not built")
@pytest.mark.parametrize("spec", ROW_RULES)
def test_rows_read_in_place_give_what_the_gathered_stack_gives_on_either_path(spec, monkeypatch):
    """A batch named by rows of a model table (some rows replaced, as crafted attack rows are),
    aggregated with the kernels, equals the same stack gathered and aggregated in torch/numpy:
    exactly where the rule only compares and adds (median, trimmed mean), to rounding elsewhere."""

    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def run(data):
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        n = data.draw(st.integers(7, 12), label="n")
        b, d = data.draw(st.integers(1, 6), label="B"), data.draw(st.sampled_from([1, 15, 16, 17, 300, 2100]), label="d")
        table = torch.from_numpy(rng.normal(size=(40, d)).astype(np.float32))
        index = rng.integers(0, 40, size=(b, n))
        rows = kernels.Rows(table, index, np.ones((b, n), dtype=bool))
        hit = rng.random((b, n)) < 0.2
        hit[:, 0] = False
        bi, bj = np.nonzero(hit)
        rows.replace(bi, bj, torch.from_numpy(rng.normal(size=(len(bi), d)).astype(np.float32)) * 50)
        stack = rows.materialize()
        params = {"bucket_size": 2} if spec.startswith("bucketing") else {}
        got = aggregate(spec, rows, f=1, **params)
        with monkeypatch.context() as mp:
            mp.setitem(kernels._state, "lib", None)
            want = aggregate(spec, stack.clone(), f=1, **params)
        if spec in ("median", "trimmed_mean"):
            assert torch.equal(got.value, want.value)
        else:
            torch.testing.assert_close(got.value, want.value, rtol=1e-4, atol=1e-4)
        assert torch.equal(rows.materialize(), stack)  # nothing was written to the rows read

    run()


@pytest.mark.skipif(not kernels.available(), reason="no C compiler: the aggregation kernels are not built")
def test_finite_rows_and_a_non_finite_row_read_in_place_is_named():
    x = torch.randn(6, 37)
    x[2, 5], x[4, 36] = float("nan"), float("-inf")
    x[5] = 3e38  # huge but finite
    assert kernels.finite_rows(x).tolist() == [True, True, False, True, False, True]
    rows = kernels.Rows(x, np.array([[0, 2, 1], [3, 5, 0]]), kernels.finite_rows(x)[np.array([[0, 2, 1], [3, 5, 0]])])
    with pytest.raises(AggregationError, match=r"\(0, 1\)"):
        aggregate("median", rows)
    assert torch.equal(aggregate("median", kernels.Rows(x, np.array([[0, 1, 3]]))).value[0],
                       x[[0, 1, 3]].median(dim=0).values)
