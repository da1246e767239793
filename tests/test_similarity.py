"""Similarity-aware mixing (aggregation.similarity): the vectorized (n, d) and (B, n, d) forms
against a plain loop-over-rows reference, and the bound on what Byzantine rows can do."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregation import AggregationError
from aggregation.similarity import similarity_mix

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(x: np.ndarray, f: int, temperature: float, prior=None) -> np.ndarray:
    """One stack (n, d), row 0 own, with plain loops in float64."""
    n = len(x)
    dist = [math.sqrt(sum((x[j][k] - x[0][k]) ** 2 for k in range(x.shape[1]))) for j in range(n)]
    neigh = sorted(dist[1:])
    scale = neigh[(len(neigh) - 1) // 2] if neigh else 0.0
    if f == 0:
        tau = math.inf
    elif n - 1 <= 2 * f:
        tau = 0.0
    else:
        tau = sorted(dist[1:], reverse=True)[2 * f]
    w = []
    for j in range(n):
        r = dist[j] / scale if scale > 0 else 0.0
        w.append(math.exp(-r * r / temperature) * (1.0 if prior is None else float(prior[j])))
    total = sum(w)
    out = x[0].astype(np.float64).copy()
    for j in range(n):
        factor = 1.0 if dist[j] <= tau else tau / dist[j]
        out += (w[j] / total) * factor * (x[j] - x[0])
    return out


@st.composite
def stacks(draw):
    b, n, d = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = np.random.default_rng(seed)
    x = g.normal(size=(b, n, d)) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    if draw(st.booleans()) and n > 1:  # duplicate rows and a row equal to the own model
        x[:, -1] = x[:, 0]
    f = draw(st.integers(0, 3))
    return x, f, draw(st.sampled_from([0.25, 1.0, 4.0])), draw(st.booleans())


@SETTINGS
@given(stacks())
def test_batched_and_single_match_the_reference(case):
    x, f, temperature, prior = case
    b, n, _ = x.shape
    p = np.random.default_rng(1).uniform(0.1, 1.0, (b, n)) if prior else None
    stack = torch.from_numpy(x)
    batch = similarity_mix(stack, None if p is None else torch.from_numpy(p), f=f, temperature=temperature)
    for i in range(b):
        want = reference(x[i], f, temperature, None if p is None else p[i])
        np.testing.assert_allclose(batch.value[i].numpy(), want, rtol=1e-9, atol=1e-9 * (1 + np.abs(x).max()))
        one = similarity_mix(stack[i], None if p is None else torch.from_numpy(p[i]), f=f, temperature=temperature)
        torch.testing.assert_close(one.value, batch.value[i])
        assert abs(float(one.weights.sum()) - 1.0) < 1e-9


def test_close_neighbours_weigh_more_and_byzantine_pull_is_bounded():
    g = torch.Generator().manual_seed(0)
    own = torch.zeros(20)
    near = [own + 0.1 * torch.randn(20, generator=g) for _ in range(3)]
    far = [own + 3.0 + 0.1 * torch.randn(20, generator=g) for _ in range(3)]
    mix = similarity_mix(torch.stack([own, *near, *far]), f=1)
    assert mix.weights[1:4].min() > mix.weights[4:].max()
    honest = torch.stack([own, *near, *far])
    farthest_honest = float(torch.linalg.vector_norm(honest - own, dim=1).max())
    for attack in (1e6 * torch.ones(20), own + 1e-3):  # huge, or pretending to be the node itself
        out = similarity_mix(torch.stack([own, *near, *far, attack]), f=1).value
        assert float(torch.linalg.vector_norm(out - own)) <= farthest_honest + 1e-6  # tau <= the farthest honest


def test_bad_parameters_say_what_to_fix():
    with pytest.raises(AggregationError, match="temperature"):
        similarity_mix(torch.zeros(3, 2), temperature=0.0)
    with pytest.raises(AggregationError, match="f must"):
        similarity_mix(torch.zeros(3, 2), f=-1)
    with pytest.raises(AggregationError, match="weights"):
        similarity_mix(torch.zeros(3, 2), torch.ones(2))
