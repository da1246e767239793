"""Plain, obviously-correct aggregation rules (loops over rows and pairs allowed) in
float64 numpy: the yardstick for the vectorized rules in tests and in bench/aggregation.py."""

from __future__ import annotations

import itertools

import numpy as np


def mean(x, w=None):
    return np.average(x, axis=0, weights=w)


def median(x):
    return np.median(x, axis=0)


def trimmed_mean(x, f):
    return np.sort(x, axis=0)[f : len(x) - f].mean(axis=0)


def pairwise_sq(x):
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = np.sum((x[i] - x[j]) ** 2)
    return d


def krum_scores(x, f):
    d = pairwise_sq(x)
    n = len(x)
    scores = []
    for i in range(n):
        others = sorted(d[i, j] for j in range(n) if j != i)
        scores.append(sum(others[: max(n - f - 2, 0)]))
    return np.array(scores)


def krum(x, f):
    return x[int(np.argmin(krum_scores(x, f)))]


def multi_krum(x, f, m=None):
    m = len(x) - f if m is None else m
    order = np.argsort(krum_scores(x, f), kind="stable")[:m]
    return x[order].mean(axis=0)


def mean_around_median(x, k):
    xs = np.sort(x, axis=0)
    dev = np.abs(xs - np.median(x, axis=0))
    idx = np.argsort(dev, axis=0, kind="stable")[:k]  # ties: the smaller value (sorted first)
    return np.take_along_axis(xs, idx, axis=0).mean(axis=0)


def meamed(x, f):
    return mean_around_median(x, len(x) - f)


def bulyan_outcomes(x, f, rel=1e-4):
    """Every value Bulyan may return: Krum's selection branches where scores tie (within
    `rel`), e.g. two mutual nearest neighbours late in the selection always tie."""
    n = len(x)
    theta = n - 2 * f
    outcomes = []

    def select(remaining, chosen):
        if len(chosen) == theta:
            outcomes.append(mean_around_median(x[sorted(chosen)], theta - 2 * f))
            return
        scores = krum_scores(x[remaining], f)
        best = scores.min()
        for i, s in enumerate(scores):
            if s <= best + rel * max(1.0, abs(best)):
                select([r for r in remaining if r != remaining[i]], chosen + [remaining[i]])

    select(list(range(n)), [])
    return outcomes


def geomed_objective(x, z, w=None):
    w = np.ones(len(x)) if w is None else np.asarray(w, dtype=float)
    return float(np.sum(w * np.linalg.norm(x - z, axis=1)))


def geomed(x, iters=2000, nu=1e-12):
    z = x.mean(axis=0)
    for _ in range(iters):
        dist = np.maximum(np.linalg.norm(x - z, axis=1), nu)
        z = (x / dist[:, None]).sum(axis=0) / (1.0 / dist).sum()
    return z


def centered_clip(x, tau, iters=1, v=None):
    v = np.zeros(x.shape[1]) if v is None else v.copy()
    for _ in range(iters):
        step = np.zeros_like(v)
        for xi in x:
            diff = xi - v
            norm = np.linalg.norm(diff)
            step += diff * min(1.0, tau / norm) if norm > 0 else 0
        v = v + step / len(x)
    return v


def self_centered_clip(x, own, tau, w=None):
    n = len(x)
    w = np.full(n, 1.0 / n) if w is None else np.asarray(w, float) / np.sum(w)
    out = x[own].copy()
    for j in range(n):
        diff = x[j] - x[own]
        norm = np.linalg.norm(diff)
        out += w[j] * (diff * min(1.0, tau / norm) if norm > 0 else diff)
    return out


def mda(x, f):
    n = len(x)
    best, best_set = np.inf, None
    for subset in itertools.combinations(range(n), n - f):
        diam = max((np.linalg.norm(x[i] - x[j]) for i, j in itertools.combinations(subset, 2)), default=0.0)
        if diam < best:
            best, best_set = diam, subset
    return x[list(best_set)].mean(axis=0), best


def nnm(x, f):
    n = len(x)
    out = np.empty_like(x)
    for i in range(n):
        dist = [np.sum((x[i] - x[j]) ** 2) for j in range(n)]
        nearest = np.argsort(dist, kind="stable")[: n - f]
        out[i] = x[nearest].mean(axis=0)
    return out


def bucketing(x, perm, s):
    return np.array([x[perm[b : b + s]].mean(axis=0) for b in range(0, len(x), s)])
