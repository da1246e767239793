"""Personalization's pure parts (peer.learning.personal) and its config: which parameters are
personal, split and merge of flat vectors and rows, the Ditto proximal step, and errors that
say what to fix."""

from __future__ import annotations

import math

import pytest
import torch

from peer.errors import ConfigError
from peer.learning.model import FlatModel, mlp, schema_hash
from peer.learning.personal import (
    Personalization,
    Split,
    ditto_pull,
    ditto_strength,
    parse_personalization,
    personal_names,
)

NAMES = ["1.weight", "1.bias", "3.weight", "3.bias"]  # the built-in mlp with one hidden layer
SHAPES = [(5, 4), (5,), (3, 5), (3,)]


def test_defaults_are_todays_behaviour():
    p = parse_personalization({})
    assert p == Personalization() and p.mode == "shared" and not p.split_parameters and not p.personal_model
    assert p.personal == ["head.*"] and p.lam == 0.1 and p.similarity is False
    full = parse_personalization({"mode": "ditto", "lambda": 2, "personal": ["3.*"], "similarity": False})
    assert full.personal_model and full.lam == 2.0 and isinstance(full.lam, float)


@pytest.mark.parametrize("raw, says", [
    ({"mode": "fedper"}, "personalization.mode must be one of shared, local_head, ditto"),
    ({"lambda": 0}, "personalization.lambda must be a number > 0"),
    ({"lambda": math.inf}, "personalization.lambda must be a number > 0"),
    ({"lambda": True}, "personalization.lambda must be a number > 0"),
    ({"personal": "head.*"}, "personalization.personal must be a list"),
    ({"personal": [""]}, "personalization.personal must be a list"),
    ({"mode": "local_head", "personal": []}, "must name at least one parameter pattern"),
    ({"similarity": "yes"}, "personalization.similarity must be true or false"),
    ({"similarity": True}, "personalization.similarity = true is not supported by what reads this table"),
    ({"lamda": 0.1}, "unknown field(s) lamda in [personalization]; allowed: mode, personal, lambda, similarity"),
])
def test_config_errors_name_the_field_and_what_is_allowed(raw, says):
    with pytest.raises(ConfigError, match=None) as err:
        parse_personalization(raw)
    assert says in str(err.value)


def test_similarity_is_accepted_only_by_a_caller_that_supports_it():
    assert parse_personalization({"similarity": True}, "scenario.personalization", similarity_supported=True).similarity
    with pytest.raises(ConfigError, match=r"scenario\.personalization\.similarity = true is not supported"):
        parse_personalization({"similarity": True}, "scenario.personalization")


def test_personal_names_match_patterns_and_refuse_nothing_or_everything():
    assert personal_names(NAMES, ["3.*"]) == ["3.weight", "3.bias"]
    assert personal_names(NAMES, ["*.bias"]) == ["1.bias", "3.bias"]
    with pytest.raises(ConfigError, match=r"pattern 'head\.\*' matches no parameter of this model; its parameters "
                                          r"are: 1\.weight, 1\.bias, 3\.weight, 3\.bias"):
        personal_names(NAMES, ["head.*"])
    with pytest.raises(ConfigError, match="match every parameter of this model, nothing would be shared"):
        personal_names(NAMES, ["*"])


def test_split_and_merge_are_inverse_on_vectors_and_rows():
    split = Split(NAMES, SHAPES, ["3.*"])
    assert split.size == 20 + 5 + 15 + 3 and split.shared_size == 25 and split.personal_size == 18
    assert split.shared_names == ["1.weight", "1.bias"] and split.personal_names == ["3.weight", "3.bias"]
    assert split.shared_schema == schema_hash(["1.weight", "1.bias"], [(5, 4), (5,)])
    v = torch.arange(split.size, dtype=torch.float32)
    assert torch.equal(split.shared(v), torch.arange(25.0)) and torch.equal(split.personal(v), torch.arange(25.0, 43))
    assert torch.equal(split.merge(split.shared(v), split.personal(v)), v)
    rows = torch.randn(3, split.size)
    assert torch.equal(split.merge(split.shared(rows), split.personal(rows)), rows)
    w = v.clone()
    split.put_shared(w, -torch.ones(25))
    assert torch.equal(w[:25], -torch.ones(25)) and torch.equal(w[25:], v[25:])


def test_split_follows_the_flat_model_layout():
    module = mlp(in_features=4, hidden=[5], classes=3)
    fm = FlatModel(module)
    split = Split(fm.names, fm.shapes, ["3.*"])
    assert torch.equal(split.personal(fm.flat), torch.cat([module[3].weight.reshape(-1), module[3].bias]).detach())


def test_ditto_pull_is_the_proximal_step_of_the_quadratic():
    personal, fleet = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])
    a = ditto_strength(lr=0.1, lam=2.0, steps=5)
    assert a == pytest.approx(1.0)
    # argmin_w 1/2 ||w - p||^2 + a/2 ||w - fleet||^2
    assert torch.allclose(ditto_pull(personal.clone(), fleet, a), torch.tensor([0.5, 2.0]))
    big = ditto_pull(personal.clone(), fleet, 1e6)  # any strength: between the two, never past the fleet model
    assert torch.allclose(big, fleet, atol=1e-5)
    rows = torch.stack([personal, personal])
    out = ditto_pull(rows, torch.stack([fleet, fleet]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(out, torch.stack([personal, torch.tensor([0.5, 2.0])]))


def test_update_privacy_of_a_local_head_noises_and_clips_only_what_is_released():
    from peer.runtime.privacy_ledger import PeerPrivacy
    from privacy.settings import PrivacySettings

    split = Split(NAMES, SHAPES, ["3.*"])
    ledger = PeerPrivacy(PrivacySettings(mode="update", noise_multiplier=1.0, clip=0.5), None,
                         torch.Generator().manual_seed(0), split)
    flat = torch.zeros(split.size)
    send, _ = ledger.before_training(0, flat)
    assert send
    flat += 10.0  # training moved every parameter far
    ledger.after_training(0, flat)
    assert torch.equal(split.personal(flat), torch.full((split.personal_size,), 10.0))  # the head: as trained
    shared = split.shared(flat)  # clipped to 0.5 and noised with std 0.5: nowhere near 10
    assert shared.abs().max() < 5.0 and shared.std() > 0
