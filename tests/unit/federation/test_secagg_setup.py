"""``protection: secagg`` set up from a config (DESIGN §2.2, §3, §4.2, §5.1): the sum form
through one secure sum, the noise shares, the config checks and the clip bound."""

from __future__ import annotations

import math

import pytest
import torch

from fedmuscle_secure.client.privacy import share_noise_multiplier
from fedmuscle_secure.crypto.identity import generate_identity
from fedmuscle_secure.crypto.secagg.client import SecAggClient
from fedmuscle_secure.crypto.secagg.server import SecAggServer
from fedmuscle_secure.crypto.secagg.sum_encoding import SumEncoding
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.losses import (
    leave_one_out_terms,
    muscle_sum_loss,
    muscle_sum_loss_from_terms,
)
from fedmuscle_secure.server.computation import sum_form_terms
from fedmuscle_secure.simulator import build_federation
from helpers.tiny import tiny_config

TAU, GAMMA = 0.2, 1.3


def _secure_sum(vectors: dict[str, torch.Tensor], threshold: int) -> torch.Tensor:
    """Run one full secagg instance over ``vectors`` and return the server's int64 sum."""
    names = list(vectors)
    keys = {n: generate_identity() for n in names}
    pubs = {n: k.public_key() for n, k in keys.items()}
    length = next(iter(vectors.values())).numel()
    server = SecAggServer(names, threshold, length, identities=pubs)
    clients, pending = {}, []
    for setup in server.start():
        n = setup.recipient
        clients[n] = SecAggClient(n, keys[n], {p: k for p, k in pubs.items() if p != n}, setup, vectors[n])
        pending += server.receive(clients[n].advertise())
    while pending:
        nxt = []
        for msg in pending:
            nxt += server.receive(clients[msg.recipient].handle(msg))
        pending = nxt
    assert server.result is not None
    return server.result


def _unit_rows(*shape: int, generator: torch.Generator) -> torch.Tensor:
    z = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return z / z.norm(dim=-1, keepdim=True)


def test_sum_form_loss_through_secagg_equals_plain_within_fixed_point_precision():
    g = torch.Generator().manual_seed(3)
    n, b, d = 4, 16, 8
    z = _unit_rows(n, b, d, generator=g)  # released rows of the 4 clients
    enc = SumEncoding(batches=1, rows=b, dim=d, group_size=n, value_clip=1.001, sq_norm_clip=1.001,
                      frac_bits=20)  # coarse on purpose: the bound below must be what limits
    vectors = {f"c{i}": enc.encode(z[i:i + 1], (z[i:i + 1] ** 2).sum(-1))[0] for i in range(n)}
    u, q = enc.decode(_secure_sum(vectors, threshold=3))
    scaled, log_alpha = sum_form_terms(u, q, tau=TAU, gamma=GAMMA)
    eps_z = enc.z_codec.precision_for(n)  # per coordinate of U (own removal: one more encoding)
    eps_q = enc.q_codec.precision_for(n)
    for i in range(n):
        anchor = _unit_rows(b, d, generator=g)
        own_z, own_q = enc.round_trip(z[i:i + 1], (z[i:i + 1] ** 2).sum(-1))
        s, la = leave_one_out_terms(scaled[0], log_alpha[0], own_z[0], own_q[0], tau=TAU, gamma=GAMMA)
        got = muscle_sum_loss_from_terms(anchor, s, la, reduction="none")
        peers = torch.cat([z[:i], z[i + 1:]])
        want = muscle_sum_loss(anchor, peers.sum(0), (peers**2).sum((0, 2)), tau=TAU, gamma=GAMMA,
                               reduction="none")
        # Each coordinate of U − own is off by ≤ e = 2·eps_z (sum and own round trip), q by
        # ≤ 2·eps_q; |Δ logit| ≤ ||anchor||·√d·e/τ + (γ/2)(2||U||√d·e + d·e² + 2·eps_q),
        # and a loss (logsumexp − diagonal) moves by at most twice the largest |Δ logit|.
        e = 2 * eps_z
        u_norm = float(peers.sum(0).norm(dim=1).max()) + math.sqrt(d) * e
        bound = 2 * (math.sqrt(d) * e / TAU + GAMMA / 2 * (2 * u_norm * math.sqrt(d) * e + d * e * e + 2 * eps_q))
        assert float((got - want).abs().max()) <= bound
        assert bound < 1e-3  # the check is not vacuous at this precision


def test_share_noise_multiplier_arithmetic():
    # any t − t_collude shares of variance (σ/√(t − t_collude))² sum to exactly σ²
    for t, tc in [(3, 0), (3, 2), (6, 2), (10, 9)]:
        share = share_noise_multiplier(2.5, t, tc)
        assert (t - tc) * share**2 == pytest.approx(2.5**2, rel=1e-12)
    with pytest.raises(ValueError, match="t_collude"):
        share_noise_multiplier(1.0, 3, 3)


def test_distributed_shares_sum_to_the_target_variance():
    """t − t_collude clients' noise shares (from the CSPRNG release path) add up to the
    target variance (σ·2√B)²: 4·10⁵ coordinates per share, 5-sd tolerance on the variance."""
    from fedmuscle_secure.dp.noise import gaussian_release

    sigma, t, tc, rows, dim = 1.5, 5, 2, 16, 25_000
    share = share_noise_multiplier(sigma, t, tc)
    zero = torch.zeros(1, rows, dim, dtype=torch.float64)
    total = sum(gaussian_release(zero, noise_multiplier=share)[0] for _ in range(t - tc))
    target = (sigma * 2 * math.sqrt(rows)) ** 2
    n = total.numel()
    assert float(total.var()) == pytest.approx(target, rel=5 * math.sqrt(2 / n))
    one = gaussian_release(zero, noise_multiplier=share)[0]
    assert float(one.var()) == pytest.approx(target / (t - tc), rel=5 * math.sqrt(2 / n))


@pytest.mark.parametrize("over,field", [
    ({"protection": "secagg"}, "muscle.method"),
    ({"protection": "secagg", "muscle.method": "muscle_sum", "secagg": {"threshold": 4}}, "secagg.threshold"),
    ({"protection": "secagg", "muscle.method": "muscle_sum", "secagg": {"threshold": 2, "t_collude": 2}},
     "secagg.t_collude"),
])
def test_secagg_config_errors_name_the_field(over, field):
    with pytest.raises(ConfigError) as exc:
        tiny_config(**over)
    assert exc.value.field == field


def test_secagg_needs_three_clients():
    clients = [{"name": n, "model": "test_resnet", "image_size": 8, "task": "digit10"} for n in "ab"]
    with pytest.raises(ConfigError) as exc:
        tiny_config(**{"protection": "secagg", "muscle.method": "muscle_sum", "muscle.num_selected": 1,
                       "clients": clients})
    assert exc.value.field == "clients"


def _clip_config(clip: float, noise: bool):
    privacy = {"representation_noise": {"enabled": True, "noise_multiplier": 1.0}} if noise else {}
    return tiny_config(protection="secagg", privacy=privacy, **{
        "muscle.method": "muscle_sum", "secagg": {"clip": clip}})


def _coordinates(cfg) -> int:
    m = cfg.muscle
    return (len(cfg.clients) * cfg.training.rounds * cfg.training.cl_epochs
            * (cfg.data.public_size // m.batch_size) * m.batch_size * m.dim)


def test_a_clip_that_breaks_the_recorded_gaussian_noise_is_refused_with_the_minimum():
    """A clip at 1 + 3 noise-share sds cuts about 0.3 % of the noised coordinates of every
    release: the secure sum's noise is then not the Gaussian the accountant records (the
    ledger would claim an ε the mechanism does not have). Refused, naming secagg.clip and
    the smallest clip for which the chance that any coordinate of the run is clipped stays
    below δ/100; a clip above it is accepted."""
    from fedmuscle_secure.federation.secagg import min_clip_sds, secagg_parameters

    sigma = 1.0
    std = secagg_parameters(_clip_config(100.0, True), sigma).share_std
    assert std > 0
    cfg = _clip_config(1 + 3 * std, True)
    with pytest.raises(ConfigError) as exc:
        secagg_parameters(cfg, sigma)
    k = min_clip_sds(_coordinates(cfg), cfg.privacy.delta)
    assert exc.value.field == "secagg.clip" and f"{1 + k * std:.4g}" in str(exc.value)
    # the minimum is what the bound says: p <= δ/100 at k, not at k - 0.02 (k above the floor 6)
    tail = _coordinates(cfg) * math.erfc(k / math.sqrt(2))
    assert tail <= cfg.privacy.delta / 100 < _coordinates(cfg) * math.erfc((k - 0.02) / math.sqrt(2))
    assert secagg_parameters(_clip_config(1 + (k + 0.01) * std, True), sigma).value_clip \
        == pytest.approx(1 + (k + 0.01) * std)
    with pytest.raises(ConfigError, match="secagg.clip"):  # the simulator's set-up refuses too
        build_federation(cfg, make_split(cfg), "muscle_sum")


def test_a_clip_below_one_without_noise_is_only_a_warning(caplog):
    """No noise, no accounting: a clip below 1 cuts unit-row coordinates (accuracy only)."""
    from fedmuscle_secure.federation.secagg import secagg_parameters

    with caplog.at_level("WARNING", logger="fedmuscle_secure.secagg"):
        assert secagg_parameters(_clip_config(0.5, False), None).value_clip == 0.5
    assert any("secagg.clip = 0.5 is below 1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fedmuscle_secure.secagg"):
        secagg_parameters(_clip_config(1.5, False), None)
    assert not caplog.records
