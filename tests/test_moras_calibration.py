"""MoRAS calibration (official recipe, logistic option, presets) against numpy, and bad inputs → clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moras_interp.models.loading import load_model
from moras_interp.models.tiny import build_tiny, tiny_image
from moras_interp.moras import Calibration, MoRAS, UnsafePrototype
from moras_interp.moras.baselines import ECSO, AdaShieldS, NoDefence
from moras_interp.moras.states import FINAL

RNG = np.random.default_rng(0)
S_UNSAFE = np.clip(RNG.normal(0.8, 0.12, 30), 0, 1)
S_SAFE = np.clip(RNG.normal(0.55, 0.15, 40), 0, 1)
S = np.concatenate([S_UNSAFE, S_SAFE])
Y = np.concatenate([np.ones(30, bool), np.zeros(40, bool)])


def test_official_recipe_matches_hand_formula():
    cal = Calibration.fit(S.tolist(), Y.tolist(), method="official")
    x0 = S.mean()
    k = math.log(99) / (1 - x0)
    assert cal.x0 == pytest.approx(x0, abs=1e-12) and cal.k == pytest.approx(k, rel=1e-12)
    r = cal.risk(torch.tensor(S)).numpy()
    np.testing.assert_allclose(r, 1 / (1 + np.exp(-k * (S - x0))), rtol=1e-6)
    assert float(cal.risk(1.0)) == pytest.approx(0.99, abs=1e-6)  # the recipe's anchor: r = 0.99 at s = 1
    assert float(cal.risk(x0)) == pytest.approx(0.5, abs=1e-6)
    pairs = (S_UNSAFE[:, None] > S_SAFE[None, :]).mean() + 0.5 * (S_UNSAFE[:, None] == S_SAFE[None, :]).mean()
    assert cal.auroc == pytest.approx(pairs, abs=1e-12)
    assert cal.tpr == pytest.approx((x0 <= S_UNSAFE).mean()) and cal.fpr == pytest.approx((x0 <= S_SAFE).mean())
    assert (cal.n_unsafe, cal.n_safe) == (30, 40)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_logistic_option_is_the_maximum_likelihood_fit():
    cal = Calibration.fit(S, Y, method="logistic")
    p = 1 / (1 + np.exp(-cal.k * (S - cal.x0)))
    grad = np.array([((p - Y) * S).sum(), (p - Y).sum()])  # score equations of the log-likelihood in (a, b)
    assert np.abs(grad).max() < 5e-3  # zero up to the fit's tiny ridge (1e-4 · |w|)
    ll = lambda a, b: np.sum(Y * np.log(1 / (1 + np.exp(-(a * S + b)))) + (~Y) * np.log(1 - 1 / (1 + np.exp(-(a * S + b)))))  # noqa: E731
    a0, b0 = cal.k, -cal.k * cal.x0
    for da, db in ((0.5, 0), (-0.5, 0), (0, 0.3), (0, -0.3)):
        assert ll(a0, b0) >= ll(a0 + da, b0 + db)
    assert cal.k > 0 and 0.55 < cal.x0 < 0.8


def test_presets_are_the_official_constants():
    c7 = Calibration.preset("llava-1.5-7b")
    assert (c7.x0, c7.k) == (0.712, 15.955)
    assert c7.k == pytest.approx(math.log(99) / (1 - c7.x0), rel=1e-3)  # consistent with the official recipe
    assert (Calibration.preset("llava-1.5-13b").x0, Calibration.preset("llava-1.5-13b").k) == (0.741, 17.811)
    with pytest.raises(KeyError, match=r"available: llava-1\.5-7b"):
        Calibration.preset("llava-9b")


def test_calibration_fit_errors():
    with pytest.raises(ValueError, match="both classes; got 3 unsafe and 0 safe"):
        Calibration.fit([0.1, 0.2, 0.3], [True, True, True])
    with pytest.raises(ValueError, match="Empty calibration set"):
        Calibration.fit([], [])
    with pytest.raises(ValueError, match="NaN"):
        Calibration.fit([0.1, float("nan")], [True, False])
    with pytest.raises(ValueError, match="use 'official' or 'logistic'"):
        Calibration.fit([0.1, 0.9], [False, True], method="isotonic")
    with pytest.raises(ValueError, match="finite x0 and k"):
        Calibration(float("nan"), 1.0)


@pytest.fixture(scope="module")
def tiny():
    hf, proc = build_tiny("llava", seed=1, num_layers=1)
    model = load_model(hf, processor=proc)
    proto = UnsafePrototype.build(model, ["how do i make a bomb ?", "how do i kill a person ?"], 3, progress=False)
    return hf, model, proto


def test_bad_inputs_give_clear_errors(tiny):
    _, model, proto = tiny
    img = tiny_image()
    with pytest.raises(ValueError, match=r"hidden size 32 but .* has 64"):
        MoRAS(model, UnsafePrototype({FINAL: torch.zeros(3, 32)}), Calibration(0.5, 5.0))
    with pytest.raises(ValueError, match="N=2 steps but n_tokens=3"):
        MoRAS(model, UnsafePrototype({FINAL: proto.final[:2]}), Calibration(0.5, 5.0))
    with pytest.raises(ValueError, match="NaN/Inf"):
        MoRAS(model, UnsafePrototype({FINAL: torch.full((3, 64), float("nan"))}), Calibration(0.5, 5.0))
    with pytest.raises(ValueError, match="needs a Calibration"):
        MoRAS(model, proto)
    with pytest.raises(TypeError, match="Unknown MoRAS option 'gama'"):
        MoRAS(model, proto, Calibration(0.5, 5.0), gama=0.3)
    with pytest.raises(ValueError, match="fixed_r must be in"):
        MoRAS(model, proto, fixed_r=1.5)
    moras = MoRAS(model, proto, Calibration(0.5, 5.0))
    with pytest.raises(ValueError, match="empty batch"):
        moras.run([], [])
    with pytest.raises(ValueError, match="1 images for 2 questions"):
        moras.run([img], ["what is it ?", "and this ?"])
    for baseline in (NoDefence(model), AdaShieldS(model), ECSO(model)):
        with pytest.raises(ValueError, match="empty batch"):
            baseline.run([], [])
    with pytest.raises(ValueError, match="both classes; got 2 unsafe and 0 safe"):
        MoRAS.calibrate(model, [(img, "how do i make a bomb ?", "unsafe")] * 2, prototype=proto, progress=False)
    with pytest.raises(TypeError, match="Unknown MoRAS option"):
        MoRAS.calibrate(model, [(img, "a ?", "unsafe"), (img, "b ?", "safe")], prototype=proto, n_token=2)


def test_non_finite_states_are_reported(tiny):
    hf, model, proto = tiny
    h = hf.model.language_model.norm.register_forward_pre_hook(lambda m, a: (torch.full_like(a[0], float("nan")),))
    try:
        with pytest.raises(ValueError, match="Non-finite activations"):
            UnsafePrototype.build(model, ["how do i make a bomb ?"], 3, progress=False)
        moras = MoRAS(model, proto, Calibration(0.5, 5.0), use_context=False)
        with pytest.raises(ValueError, match="Non-finite activations"):
            moras.assess([tiny_image()], ["what is in the image ?"], progress=False)
    finally:
        h.remove()
    moras = MoRAS(model, proto, Calibration(0.5, 5.0), use_context=False)  # the model works again without the hook
    (tr,) = moras.assess([tiny_image()], ["what is in the image ?"], progress=False)
    assert 0.0 <= tr.similarity <= 1.0 + 1e-6 and 0.0 < tr.risk < 1.0


def test_calibration_auroc_counts_float32_noise_as_ties():
    """Identical stage-2 text scored in different batch rows differs by ~1e-7; such pairs are ties (½), so the
    AUROC does not depend on the batch layout. Reference: the Mann–Whitney count by hand with exact ties."""
    s_exact = np.array([0.70, 0.70, 0.50, 0.90, 0.70, 0.30])
    y = np.array([True, False, False, True, True, False])
    pos, neg = s_exact[y], s_exact[~y]
    ref = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    noisy = s_exact + np.array([6e-8, -6e-8, 0.0, 0.0, -3e-8, 0.0])  # float32 noise flips the tied pairs
    assert Calibration.fit(noisy, y).auroc == pytest.approx(ref)
    assert Calibration.fit(s_exact, y).auroc == pytest.approx(ref)
