"""Differential privacy core (issue 15): the noise has the configured std, clipping bounds the
change, the accountant's epsilon is dp_accounting's for the same events and its ledger is
checked when read back, the budget stops spending, DP-SGD matches a per-example reference and
trains the built-in learner."""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from peer.learning.classification import ClassificationLearner, TrainConfig
from peer.learning.data import digits_shard
from peer.learning.model import FlatModel, build_model
from privacy import PrivacySettings, check_privacy
from privacy.accountant import (
    MAX_EVENT_KINDS,
    PLD_DISCRETIZATION,
    PLD_MAX_STEPS,
    Accountant,
    PrivacyStateError,
    Release,
    replacement_epsilon,
)
from privacy.dp import clip_rows, privatize, privatize_model, secure_generator, seeded_generator
from privacy.dpsgd import poisson_batch, private_step_grad

torch.set_num_threads(1)


# ---- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, mode", [
    ("mode", "central", "off"), ("noise_multiplier", -1.0, "update"), ("noise_multiplier", 0.0, "record"),
    ("noise_multiplier", math.nan, "update"), ("clip", -1, "update"), ("clip", math.inf, "update"),
    ("delta", 0.0, "update"), ("delta", 1.0, "update"), ("epsilon", 0.0, "update"),
    ("epsilon", math.nan, "update"), ("accountant", "moments", "update"), ("clip", True, "update")])
def test_check_privacy_names_the_field(field, value, mode):
    s = PrivacySettings(mode=mode)
    setattr(s, field, value)
    message = check_privacy(s)
    assert message is not None and message.startswith(f"privacy.{field} ") and "\n" not in message


def test_check_privacy_accepts_defaults_and_infinite_budget():
    assert check_privacy(PrivacySettings()) is None
    assert check_privacy(PrivacySettings(mode="off", noise_multiplier=0.0)) is None
    assert check_privacy(PrivacySettings(mode="record", noise_multiplier=1.1, epsilon=math.inf)) is None
    assert check_privacy(PrivacySettings(mode="update", accountant="pld", epsilon=3.0)) is None


# ---- noise and clipping ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(200_000,), (400, 500)])
def test_noise_has_the_configured_std(shape):
    clip, sigma = 0.5, 1.3
    noised, norms = privatize(torch.zeros(shape), clip, sigma, seeded_generator(7))
    assert noised.shape == shape and torch.all(norms == 0)
    z = noised.double().flatten().numpy()
    std = sigma * clip
    assert abs(z.std() / std - 1) < 0.01
    assert abs(z.mean()) < 5 * std / math.sqrt(z.size)
    assert stats.kstest(z / std, "norm").pvalue > 1e-3
    if len(shape) == 2:  # rows are independent: per-row means are N(0, std^2 / d)
        row_means = noised.double().mean(1).numpy() * math.sqrt(shape[1]) / std
        assert stats.kstest(row_means, "norm").pvalue > 1e-3


def test_noise_is_added_to_the_clipped_change():
    delta = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    noised, norms = privatize(delta, 1.0, 0.0, seeded_generator(0))
    assert torch.allclose(norms, torch.tensor([5.0, 0.5]))
    assert torch.allclose(noised, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


rows = st.integers(1, 6).flatmap(lambda n: st.integers(1, 40).flatmap(lambda d: st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=n * d, max_size=n * d).map(
    lambda v: torch.tensor(v, dtype=torch.float32).reshape(n, d))))


@settings(max_examples=150, deadline=None)
@given(rows, st.floats(1e-3, 1e3), st.booleans())
def test_clipping_bounds_every_row_and_keeps_small_ones(delta, clip, one_row):
    x = delta[0] if one_row else delta
    clipped, norms = clip_rows(x, clip)
    assert clipped.shape == x.shape and norms.shape == x.shape[:-1]
    clipped, norms = clipped.reshape(-1, x.shape[-1]), norms.reshape(-1)  # rows, whichever the shape
    rows_in = delta[:1] if one_row else delta
    exact = torch.linalg.vector_norm(rows_in, dim=1, dtype=torch.float64)
    assert torch.allclose(norms.double(), exact, rtol=1e-5)
    assert torch.all(torch.linalg.vector_norm(clipped.double(), dim=1) <= clip * (1 + 1e-6))
    small = norms <= clip
    assert torch.equal(clipped[small], rows_in[small])  # within the bound: bit-for-bit unchanged
    if (~small).any():  # clipped rows keep their direction
        cos = torch.nn.functional.cosine_similarity(clipped[~small].double(), rows_in[~small].double(), dim=1)
        assert torch.all(cos > 1 - 1e-5)


def test_privatize_model_adds_the_private_change_back():
    start = torch.zeros(4)
    end = torch.tensor([2.0, 0.0, 0.0, 0.0])
    new, details = privatize_model(start, end, 0.5, 0.0, seeded_generator(1))
    assert torch.allclose(new, torch.tensor([0.5, 0, 0, 0])) and details == {"norm": 2.0, "clipped": True}
    new, details = privatize_model(start + 1, end + 1, 5.0, 0.0, seeded_generator(1))
    assert torch.equal(new, end + 1) and details["clipped"] is False
    a, _ = privatize_model(start, end, 0.5, 2.0, seeded_generator(3))
    b, _ = privatize_model(start, end, 0.5, 2.0, seeded_generator(3))
    assert torch.equal(a, b) and not torch.allclose(a, torch.tensor([0.5, 0, 0, 0]))
    with pytest.raises(ValueError):
        privatize_model(torch.zeros(3), torch.zeros(4), 1.0, 1.0, seeded_generator(0))
    with pytest.raises(ValueError, match="not finite"):  # a diverged model is never released
        privatize_model(start, torch.tensor([math.nan, 0, 0, 0]), 1.0, 1.0, seeded_generator(0))


def test_secure_generators_differ():
    a, b = secure_generator(), secure_generator()
    assert not torch.equal(torch.randn(64, generator=a), torch.randn(64, generator=b))
    assert a.initial_seed() != b.initial_seed()


# ---- accountant -----------------------------------------------------------------------------

def library_epsilon(kind, delta, events):
    acc = rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for sigma, q, steps in events:
        g = dpa.GaussianDpEvent(sigma)
        acc.compose(g if q == 1 else dpa.PoissonSampledDpEvent(q, g), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_update_mode_epsilon_is_the_librarys(kind):
    acc = Accountant(kind, 1e-5)
    assert acc.epsilon() == 0
    for k in range(1, 6):
        eps = acc.spend(Release(4.0))
        assert eps == pytest.approx(library_epsilon(kind, 1e-5, [(4.0, 1.0, 1)] * k), rel=1e-9)
        assert eps == pytest.approx(library_epsilon(kind, 1e-5, [(4.0, 1.0, k)]), rel=1e-5)  # one k-fold event
    assert acc.epsilon() == eps


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_record_mode_epsilon_is_the_librarys(kind):
    acc = Accountant(kind, 1e-5)
    for _ in range(8):
        acc.spend(Release(1.1, 0.05, 25))
    acc.spend(Release(0.9, 0.02, 10))  # a second kind of release: composed with the first
    spent = [(1.1, 0.05, 25)] * 8 + [(0.9, 0.02, 10)]
    assert acc.epsilon() == pytest.approx(library_epsilon(kind, 1e-5, spent), rel=1e-9)
    assert acc.epsilon_if(Release(1.1, 0.05, 25)) == pytest.approx(
        library_epsilon(kind, 1e-5, spent + [(1.1, 0.05, 25)]), rel=1e-9)
    if kind == "rdp":  # RDP adds up: the merged ledger is the same composition
        assert acc.epsilon() == pytest.approx(library_epsilon(kind, 1e-5, [(1.1, 0.05, 200), (0.9, 0.02, 10)]))


def replace_one_epsilon(delta, events) -> float:
    """dp_accounting's PLD under the replace-one relation, composed here independently."""
    acc = pld.PLDAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE,
                            value_discretization_interval=PLD_DISCRETIZATION)
    for sigma, q, steps in events:
        g = dpa.GaussianDpEvent(sigma)
        acc.compose(g if q == 1 else dpa.PoissonSampledDpEvent(q, g), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
@pytest.mark.parametrize("events", [[(1.0, 1.0, 20)], [(1.1, 0.05, 200), (0.9, 0.02, 10)]])
def test_both_neighbouring_relations_are_the_librarys(kind, events):
    acc = Accountant(kind, 1e-5)
    for sigma, q, steps in events:
        acc.spend(Release(sigma, q, steps))
    assert acc.epsilon_replace() == pytest.approx(replace_one_epsilon(1e-5, events), rel=1e-6)
    assert acc.epsilon_replace() > acc.epsilon()  # a swap moves a release twice as far as a removal
    # update mode: replacement is add/remove at twice the sensitivity (sigma / 2), within the PLD's grid
    if events[0][1] == 1.0:
        assert acc.epsilon_replace() == pytest.approx(library_epsilon("pld", 1e-5, [(0.5, 1.0, 20)]), rel=1e-2)
    assert Accountant.from_state(acc.state()).epsilon_replace() == pytest.approx(acc.epsilon_replace())


def test_replacement_beyond_the_plds_range_falls_back_to_a_bound_or_says_none():
    many = {(1.0, 1.0): PLD_MAX_STEPS + 1}
    bound = library_epsilon("rdp", 1e-5, [(0.5, 1.0, PLD_MAX_STEPS + 1)])
    assert replacement_epsilon(many, 1e-5) == pytest.approx(bound)
    assert math.isinf(replacement_epsilon({(1.0, 0.01): PLD_MAX_STEPS + 1}, 1e-5))
    assert replacement_epsilon({}, 1e-5) == 0.0


def test_pld_is_tighter_than_rdp_and_epsilon_grows():
    r, p = Accountant("rdp"), Accountant("pld")
    last = 0.0
    for _ in range(5):
        er, ep = r.spend(Release(1.0, 0.01, 100)), p.spend(Release(1.0, 0.01, 100))
        assert 0 < ep <= er and er > last
        last = er


def test_epsilon_if_does_not_spend():
    acc = Accountant()
    acc.spend(Release(2.0))
    before, state = acc.epsilon(), acc.state()
    assert acc.epsilon_if(Release(2.0)) > before
    assert acc.epsilon() == before and acc.state() == state
    assert acc.epsilon_if(Release(2.0, 0.5, 0)) == before  # zero steps: nothing released


def test_state_round_trips_and_stays_small():
    acc = Accountant("rdp", 1e-6)
    for _ in range(30):
        acc.spend(Release(1.2, 0.03, 40))
        acc.spend(Release(30.0))
    assert acc.epsilon() == pytest.approx(library_epsilon("rdp", 1e-6, [(1.2, 0.03, 40), (30.0, 1.0, 1)] * 30))
    state = acc.state()
    assert state == {"kind": "rdp", "delta": 1e-6, "events": [[1.2, 0.03, 1200], [30.0, 1.0, 30]]}
    back = Accountant.from_state(state)
    assert back.state() == state and back.epsilon() == pytest.approx(acc.epsilon(), rel=1e-9)
    assert back.epsilon_if(Release(30.0)) == pytest.approx(acc.epsilon_if(Release(30.0)), rel=1e-9)
    import msgpack
    assert Accountant.from_state(msgpack.unpackb(msgpack.packb(state))).epsilon() == back.epsilon()
    state["kind"] = "pld"
    assert Accountant.from_state(state).epsilon() == pytest.approx(
        library_epsilon("pld", 1e-6, state["events"]), rel=1e-9)


@pytest.mark.parametrize("state", [
    None, [], {"kind": "rdp", "delta": 1e-5}, {"kind": "rdp", "delta": 1e-5, "events": [], "x": 1},
    {"kind": "moments", "delta": 1e-5, "events": []}, {"kind": "rdp", "delta": math.nan, "events": []},
    {"kind": "rdp", "delta": 0, "events": []}, {"kind": "rdp", "delta": "1e-5", "events": []},
    {"kind": "rdp", "delta": 1e-5, "events": "abc"}, {"kind": "rdp", "delta": 1e-5, "events": [[1.0, 1.0]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[math.nan, 1.0, 1]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[-1.0, 1.0, 1]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[0.0, 1.0, 1]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[1.0, 0.0, 1]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[1.0, 1.5, 1]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[1.0, math.inf, 1]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[1.0, 1.0, -3]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[1.0, 1.0, 2.5]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[1.0, 1.0, True]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[1.0, 1.0, 10**30]]},
    {"kind": "rdp", "delta": 1e-5, "events": [["1", 1.0, 1]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[1.0, 1.0, 1], [1.0, 1.0, 2]]},
    {"kind": "rdp", "delta": 1e-5, "events": [[1.0 + i / 100, 1.0, 1] for i in range(MAX_EVENT_KINDS + 1)]},
])
def test_from_state_rejects_hostile_states(state):
    with pytest.raises(PrivacyStateError) as err:
        Accountant.from_state(state)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_releases_are_checked_and_ledger_kinds_bounded():
    for bad in [dict(sigma=0.0), dict(sigma=math.nan), dict(sigma=1.0, q=0.0), dict(sigma=1.0, steps=-1)]:
        with pytest.raises(PrivacyStateError):
            Release(**bad)
    acc = Accountant()
    for i in range(MAX_EVENT_KINDS):
        acc.spend(Release(1.0 + i, 1.0, 0 if i else 1))  # zero-step releases add no kind
    for i in range(1, MAX_EVENT_KINDS):
        acc.spend(Release(10.0 + i, 1.0, 1))
    assert len(acc.state()["events"]) == MAX_EVENT_KINDS
    with pytest.raises(PrivacyStateError):
        acc.spend(Release(99.0, 1.0, 1))
    acc.spend(Release(11.0, 1.0, 1))  # a kind already in the ledger is still fine


@pytest.mark.parametrize("kind, release", [("rdp", Release(1.0, 0.02, 30)), ("pld", Release(3.0))])
def test_allows_stops_at_the_budget(kind, release):
    budget = 2.0
    acc = Accountant(kind)
    spent = 0
    while acc.allows(release, budget):
        assert acc.spend(release) <= budget
        spent += 1
        assert spent < 1000
    assert spent > 1 and acc.epsilon() <= budget < acc.epsilon_if(release)
    assert Accountant(kind).allows(Release(0.02), math.inf)  # no budget: always allowed


# ---- DP-SGD ---------------------------------------------------------------------------------

def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def flat_grad(net):
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def test_dpsgd_without_noise_and_clipping_is_the_scaled_mean_gradient():
    net, loss_fn = small_net(), nn.CrossEntropyLoss()
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    got = private_step_grad(net, loss_fn, x, y, clip=1e9, sigma=0.0, generator=seeded_generator(0), expected_batch=12.0)
    net.zero_grad()
    loss_fn(net(x), y).backward()
    assert torch.allclose(got, flat_grad(net) * 9 / 12, atol=1e-6)


def test_dpsgd_clips_every_example_like_a_per_example_loop():
    net, loss_fn, clip = small_net(1), nn.CrossEntropyLoss(), 0.05
    x, y = torch.randn(11, 5) * 4, torch.randint(0, 3, (11,))
    reference = torch.zeros(sum(p.numel() for p in net.parameters()))
    for i in range(len(x)):
        net.zero_grad()
        loss_fn(net(x[i : i + 1]), y[i : i + 1]).backward()
        g = flat_grad(net)
        reference += g * min(1.0, clip / float(g.norm()))
    got = private_step_grad(net, loss_fn, x, y, clip, 0.0, seeded_generator(0), expected_batch=5.5)
    assert torch.allclose(got, reference / 5.5, atol=1e-6)
    assert got.norm() <= len(x) * clip / 5.5 * (1 + 1e-5)


def test_dpsgd_noise_and_empty_batch():
    net, loss_fn = small_net(), nn.CrossEntropyLoss()
    d = sum(p.numel() for p in net.parameters())
    empty = private_step_grad(net, loss_fn, torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), 2.0, 1.5,
                              seeded_generator(4), expected_batch=4.0)
    noise = torch.randn(d, generator=seeded_generator(4)) * 1.5 * 2.0 / 4.0
    assert torch.allclose(empty, noise)
    x, y = torch.randn(3, 5), torch.randint(0, 3, (3,))
    plain = private_step_grad(net, loss_fn, x, y, 2.0, 0.0, seeded_generator(4), 4.0)
    noisy = private_step_grad(net, loss_fn, x, y, 2.0, 1.5, seeded_generator(4), 4.0)
    assert torch.allclose(noisy - plain, noise, atol=1e-6)


def test_poisson_batch_includes_each_record_with_probability_q():
    gen = seeded_generator(5)
    counts = torch.zeros(1000)
    sizes = []
    for _ in range(400):
        idx = poisson_batch(1000, 0.05, gen)
        assert idx.dtype == torch.long and torch.all(idx[1:] > idx[:-1])
        counts[idx] += 1
        sizes.append(len(idx))
    assert abs(np.mean(sizes) - 50) < 2 and np.std(sizes) > 3  # Binomial(1000, 0.05): sd ~6.9
    assert abs(float(counts.mean()) / 400 - 0.05) < 0.003
    assert len(poisson_batch(10, 1.0, gen)) == 10


def digits_learner(seed=0, **train):
    data = digits_shard(0, 2)
    module = build_model("mlp", data.features, 10, seed=seed)
    flat = FlatModel(module).flat
    return ClassificationLearner(module, flat, data, TrainConfig(**train), seed=seed), flat


def test_learner_with_record_dp_trains_and_reports_q_and_steps():
    learner, flat = digits_learner(batch_size=32, lr=0.5, local_steps=15)
    n = len(learner.data.y_train)
    q, steps = learner.enable_record_dp(clip=1.0, sigma=0.8, generator=seeded_generator(11))
    assert q == pytest.approx(32 / n) and steps == 15
    before = learner.evaluate().loss
    start = flat.clone()
    losses = [learner.train(r).loss for r in range(6)]
    assert not torch.equal(flat, start) and torch.isfinite(flat).all()
    assert learner.evaluate().loss < before * 0.8 and losses[-1] < losses[0]


def test_learner_record_dp_steps_are_private_steps():
    """With enable_record_dp, one round equals DP-SGD steps driven by the same generator."""
    learner, flat = digits_learner(batch_size=16, lr=0.1, local_steps=3)
    twin, twin_flat = digits_learner(batch_size=16, lr=0.1, local_steps=3)
    q, steps = learner.enable_record_dp(0.7, 1.2, seeded_generator(2))
    learner.train(0)
    gen, x, y = seeded_generator(2), twin.data.x_train, twin.data.y_train
    for _ in range(steps):
        idx = poisson_batch(len(y), q, gen)
        g = private_step_grad(twin.module, twin.loss_fn, x[idx], y[idx], 0.7, 1.2, gen, q * len(y))
        with torch.no_grad():
            twin_flat.sub_(0.1 * g)
    assert torch.allclose(flat, twin_flat, atol=1e-6)
