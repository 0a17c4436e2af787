"""Pre-whitening of AR(1) per-cycle data: estimates, the transform, and the false-alarm rates it restores."""

from __future__ import annotations

import numpy as np

from edge_agent.core.autocorr import Prewhitener
from edge_agent.core.spc import Rule, SpcEngine, SpcParams
from edge_agent.types import Quality, Readings


def ar1(rng: np.random.Generator, signals: int, samples: int, phi: float, sd: float = 1.0) -> np.ndarray:
    """[samples, signals] of stationary AR(1) noise with marginal sd `sd`."""
    e = rng.normal(0.0, sd * np.sqrt(1 - phi * phi), (samples, signals))
    x = np.empty_like(e)
    x[0] = rng.normal(0.0, sd, signals)
    for k in range(1, samples):
        x[k] = phi * x[k - 1] + e[k]
    return x


def _feed(w: Prewhitener, x: np.ndarray, rows: np.ndarray) -> list[Readings]:
    return [w.transform(Readings.of(rows, k * 1_000_000_000, x[k])) for k in range(x.shape[0])]


def test_estimates_phi_and_whitens_to_independent_samples_with_the_same_sd() -> None:
    rng = np.random.default_rng(7)
    x = 10.0 + ar1(rng, 400, 600, phi=0.6, sd=2.0)
    rows = np.arange(400)
    w = Prewhitener(400, rows, n_estimate=200)
    out = Readings.concat(_feed(w, x, rows))
    est = w.estimates(rows)
    assert abs(np.median(est["phi"]) - 0.6) < 0.03  # r1 from 200 samples is biased low by ~(1+3phi)/n
    assert abs(np.median(est["mu"]) - 10.0) < 0.1
    z = out.value.reshape(-1, 400)[200:]  # after each row's own estimation window
    zc = z - z.mean(axis=0)
    r1 = (zc[1:] * zc[:-1]).sum(axis=0) / (zc * zc).sum(axis=0)
    assert abs(np.median(r1)) < 0.05
    assert abs(np.median(z.std(axis=0, ddof=1)) / 2.0 - 1.0) < 0.05


def test_holds_samples_back_until_the_estimate_then_releases_them_in_order() -> None:
    rows = np.array([3, 5])
    w = Prewhitener(8, rows, n_estimate=[10, 12])
    x = np.arange(24, dtype=float).reshape(12, 2)
    outs = _feed(w, x, rows)
    assert [len(o) for o in outs[:9]] == [0] * 9
    assert len(outs[9]) == 10 and set(outs[9].signal.tolist()) == {3}
    assert outs[9].t_ns.tolist() == [k * 1_000_000_000 for k in range(10)]
    assert len(outs[10]) == 1 and len(outs[11]) == 13  # row 3 live, then row 5's twelve plus row 3


def test_other_rows_and_bad_samples_pass_through() -> None:
    w = Prewhitener(4, [1], n_estimate=8)
    r = Readings.of([0, 1, 2], 5, [1.5, 2.5, np.nan], [Quality.GOOD, Quality.BAD_TIMEOUT, Quality.GOOD])
    out = w.transform(r)
    assert out.signal.tolist() == [0, 1, 2]
    assert out.value[0] == 1.5 and np.isnan(out.value[1]) and np.isnan(out.value[2])
    assert out.quality.tolist() == [Quality.GOOD, Quality.BAD_TIMEOUT, Quality.BAD_VALUE]
    assert w.n[1] == 0  # a bad sample is not part of the estimate


def test_independent_data_pass_unchanged() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 1.0, (100, 50))
    rows = np.arange(50)
    w = Prewhitener(50, rows, n_estimate=100)
    out = Readings.concat(_feed(w, x, rows))
    unchanged = w.estimates(rows)["phi"] == 0.0
    assert unchanged.mean() > 0.9  # r1 > 2/sqrt(n) happens by chance for ~2 % of iid rows
    got = out.value.reshape(50, 100).T  # released together: each row's hundred samples in turn
    assert np.allclose(got[:, unchanged], x[:, unchanged])


def test_whitening_restores_the_rule_1_false_alarm_rate_on_ar1_data() -> None:
    rng = np.random.default_rng(11)
    S, n, phase1 = 300, 700, 100
    x = 50.0 + ar1(rng, S, n, phi=0.6)
    rows = np.arange(S)

    def n1_rate(whiten: bool) -> float:
        engine = SpcEngine(S, SpcParams(phase1_n=phase1))
        w = Prewhitener(S, rows, n_estimate=phase1)
        hits = 0
        for k in range(n):
            r = Readings.of(rows, k, x[k])
            r = w.transform(r) if whiten else r
            if len(r):
                hits += int(((engine.update(r).hits.mask & Rule.N1) != 0).sum())
        return hits / (S * (n - phase1))

    raw, white = n1_rate(False), n1_rate(True)
    # moving ranges of AR(1) with phi 0.6 put the 3-sigma limits at ~1.9 sigma: ~6 % beyond
    assert raw > 0.03
    # whitened: the textbook 0.27 % for independent normal data, within sampling error
    assert 0.0015 < white < 0.0045


def test_a_step_still_shows_after_whitening() -> None:
    rng = np.random.default_rng(5)
    S = 200
    x = ar1(rng, S, 300, phi=0.5)
    x[200:] += 2.0  # a 2-sigma step after phase I
    rows = np.arange(S)
    engine = SpcEngine(S, SpcParams(phase1_n=100))
    w = Prewhitener(S, rows, n_estimate=100)
    first = np.full(S, -1)
    for k in range(300):
        r = w.transform(Readings.of(rows, k, x[k]))
        if len(r):
            hits = engine.update(r).hits
            cusum = (hits.mask & (Rule.CUSUM_POS | Rule.CUSUM_NEG)) != 0
            if k >= 200:  # the first CUSUM signal after the step (in-control ARLs are tested elsewhere)
                new = hits.row[cusum][first[hits.row[cusum]] < 0]
                first[new] = k
    delay = first[first >= 200] - 200
    assert (first >= 200).mean() > 0.95
    # the step shows as 2*sqrt(1/3) = 1.15 sigma in the residuals: CUSUM k=0.5 h=5 ARL ~ 9
    assert np.median(delay) <= 12


def test_first_sample_keeps_its_own_spread() -> None:
    """With no previous sample z = x (Prais-Winsten): whitening it against mu would inflate it by 1/sqrt(1 - phi²)."""
    rng = np.random.default_rng(3)
    x = 100.0 + ar1(rng, 2000, 50, phi=0.8)
    rows = np.arange(2000)
    w = Prewhitener(2000, rows, n_estimate=50)
    out = Readings.concat(_feed(w, x, rows))
    first = out.t_ns == 0
    assert np.array_equal(out.value[first][np.argsort(out.signal[first])], x[0])
    # so rule 1 fires on the first sample as rarely as on the others (it was 0.05 against 0.0014)
    z0 = out.value[first] - w.estimates(out.signal[first])["mu"]
    assert np.mean(np.abs(z0) > 3 * x.std(axis=0).mean()) < 0.01
