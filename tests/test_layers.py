import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securefl.codec import VectorLayout
from securefl.crypto import fixedpoint
from securefl.errors import ConfigError, UpdateError
from securefl.layers import Clip, DPNoise, Plain, PrivacyStack, Quantize, StackContext, build_layer, preset
from securefl.layers.base import ImpossibleSum, RoundContext, SecureSum
from securefl.layers.dp import TAIL
from securefl.randomness import SecureRandom


class IntegerOnlySum(SecureSum):
    """A contract-only layer that sums integers modulo 2^32 (to test stack validation)."""

    name = "int32sum"
    accepts_floats = False
    modulus_bits = 32

    def aggregator(self):
        raise NotImplementedError

    def party(self, party_id):
        raise NotImplementedError


def ctx(parties=10, weight_bound=100.0, metrics=(), bounds=None, update_size=5):
    return StackContext(
        VectorLayout(update_size, tuple(metrics)), parties, 1, weight_bound, dict(bounds or {})
    )


def test_stack_must_end_with_one_secure_sum():
    with pytest.raises(ConfigError, match="empty"):
        PrivacyStack.of([])
    with pytest.raises(ConfigError, match="must end with a secure sum"):
        PrivacyStack.of([Clip(1.0)])
    with pytest.raises(ConfigError, match="must be the last layer"):
        PrivacyStack.of([Plain(), Plain()])


def test_integer_sum_needs_quantize():
    stack = PrivacyStack.of([Clip(1.0), IntegerOnlySum()])
    with pytest.raises(ConfigError, match="put a 'quantize' transform before it"):
        stack.validate(ctx())


def test_clip_after_quantize_is_refused():
    stack = PrivacyStack.of([Clip(1.0), Quantize(16), Clip(1.0), Plain()])
    with pytest.raises(ConfigError, match="clip must come before quantize"):
        stack.validate(ctx())


def test_quantize_twice_is_refused():
    stack = PrivacyStack.of([Clip(1.0), Quantize(16), Quantize(16), Plain()])
    with pytest.raises(ConfigError, match="quantize appears twice"):
        stack.validate(ctx())


def test_quantize_needs_bounds():
    with pytest.raises(ConfigError, match="needs a bound on the update"):
        PrivacyStack.of([Quantize(16), Plain()]).validate(ctx())
    with pytest.raises(ConfigError, match="needs weight_bound"):
        PrivacyStack.of([Clip(1.0), Quantize(16), Plain()]).validate(ctx(weight_bound=None))
    with pytest.raises(ConfigError, match=r"missing for \['loss'\]"):
        PrivacyStack.of([Clip(1.0), Quantize(16), Plain()]).validate(ctx(metrics=("loss",)))


def test_quantize_overflow_is_refused_with_the_numbers():
    stack = PrivacyStack.of([Clip(1.0), Quantize(bits=24), IntegerOnlySum()])
    stack.validate(ctx(parties=255))  # 255 * (2^23 - 1) < 2^31
    with pytest.raises(ConfigError, match=r"over 257 parties needs a 33-bit modulus.*2\^32"):
        stack.validate(ctx(parties=257))


@pytest.mark.parametrize("bits", [0, 1, 63, 2.5])
def test_quantize_bits_range(bits):
    with pytest.raises(ConfigError, match="bits must be an integer from 2 to 62"):
        Quantize(bits)


@pytest.mark.parametrize("norm", [0, -1, float("nan"), float("inf")])
def test_clip_norm_must_be_positive(norm):
    with pytest.raises(ConfigError, match="positive finite"):
        Clip(norm)


def test_clip_scales_update_to_norm_times_weight():
    layout = VectorLayout(2)
    clip = Clip(1.0)
    clip.validate(StackContext(layout, 2, 1), [], Plain())
    vector = layout.pack(np.array([3.0, 4.0]), 2, {})  # w*delta = [6, 8], norm 10 > 1 * 2
    out = clip.encode(vector)
    np.testing.assert_allclose(out[:2], [1.2, 1.6])
    assert out[2] == 2
    small = layout.pack(np.array([0.3, 0.4]), 2, {})
    np.testing.assert_array_equal(clip.encode(small), small)


def test_quantize_refuses_out_of_range_value_naming_group():
    layout = VectorLayout(2, ("loss",))
    q = Quantize(16, update_bound=1.0)
    q.validate(StackContext(layout, 3, 1, 10.0, {"loss": 5.0}), [], Plain())
    with pytest.raises(UpdateError, match=r"training metrics coordinate 3 is 60.*±50"):
        q.encode(layout.pack(np.zeros(2), 10, {"loss": 6.0}))
    with pytest.raises(UpdateError, match=r"update coordinate 1 is 2"):
        q.encode(np.array([0.0, 2.0, 1.0, 0.0, 0.0]))


def test_quantize_decode_of_sum_is_close_to_float_sum():
    layout = VectorLayout(50, ("loss",))
    q = Quantize(24)
    stack = PrivacyStack.of([Clip(1.0), q, Plain()])
    stack.validate(StackContext(layout, 20, 1, 10.0, {"loss": 2.0}))
    rng = np.random.default_rng(1)
    vectors = [layout.pack(rng.normal(0, 0.05, 50), 10, {"loss": 0.7}) for _ in range(20)]
    clipped = [stack.transforms[0].encode(v) for v in vectors]
    total = sum(stack.encode(v) for v in vectors)  # uint64 wrapping addition
    decoded = stack.decode_sum(total)
    # each coordinate's rounding error is below one step (bound / (2^23 - 1)) per party
    steps = 20 * q._limits.bounds / fixedpoint.max_level(24)
    assert np.all(np.abs(decoded - sum(clipped)) <= steps)


@given(st.integers(2, 40), st.integers(1, 300), st.data())
def test_fixedpoint_sum_exact_at_the_bound(bits, parties, data):
    """n parties each at ±max level: the sum decodes exactly when sum_fits says so."""
    modulus = fixedpoint.min_modulus_bits(bits, parties)
    assert fixedpoint.sum_fits(bits, parties, modulus)
    assert not fixedpoint.sum_fits(bits, parties, modulus - 1) or parties * fixedpoint.max_level(bits) == 0
    sign = data.draw(st.sampled_from([-1.0, 1.0]))
    rng = SecureRandom(seed=0)
    level = fixedpoint.max_level(bits)
    one = fixedpoint.encode(np.array([sign * level]), 1.0, min(modulus, 64), rng)
    total = fixedpoint.reduce(one * np.uint64(parties), min(modulus, 64))
    assert fixedpoint.decode(total, 1.0, min(modulus, 64))[0] == sign * level * parties


def test_stochastic_rounding_is_unbiased():
    rng = SecureRandom(seed=3)
    values = np.full(200_000, 0.3)
    encoded = fixedpoint.encode(values, 1.0, 64, rng)
    decoded = fixedpoint.decode(encoded, 1.0, 64)
    assert set(np.unique(decoded)) == {0.0, 1.0}
    assert abs(decoded.mean() - 0.3) < 0.005  # ~5 standard errors


def test_negative_values_wrap_and_decode():
    rng = SecureRandom(seed=0)
    enc = fixedpoint.encode(np.array([-5.0, 5.0, 0.0]), 1.0, 16, rng)
    assert enc.tolist() == [65531, 5, 0]
    np.testing.assert_array_equal(fixedpoint.decode(enc, 1.0, 16), [-5.0, 5.0, 0.0])


def test_build_layer_and_presets():
    assert isinstance(build_layer({"layer": "clip", "norm": 2.0}), Clip)
    with pytest.raises(ConfigError, match="unknown privacy layer 'nope'"):
        build_layer({"layer": "nope"})
    with pytest.raises(ConfigError, match="layer 'clip'"):
        build_layer({"layer": "clip", "radius": 1})
    with pytest.raises(ConfigError, match="unknown privacy preset"):
        preset("tor")
    assert [type(x) for x in preset("plain")] == [Plain]


# --- the sum-bound check: a revealed sum that honest parties cannot have produced ----------------


def _quantized_stack(parties=4, bits=16, modulus=64):
    layout = VectorLayout(3)
    stack = PrivacyStack.of(
        [Quantize(bits, update_bound=10.0), Plain() if modulus == 64 else IntegerOnlySum()]
    )
    stack.validate(StackContext(layout, parties, 1, 10.0))
    return stack, layout


@given(st.integers(1, 4), st.data())
def test_sum_of_honest_parties_at_their_bounds_passes_the_check(contributors, data):
    stack, layout = _quantized_stack()
    signs = data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    vectors = [layout.pack(np.array(signs), 10, {}, 10) for _ in range(contributors)]
    total = sum(stack.encode(v) for v in vectors)
    decoded = stack.decode_sum(total, contributors)
    np.testing.assert_allclose(decoded[:3], contributors * 10 * np.array(signs), rtol=1e-3)


@pytest.mark.parametrize("modulus", [64, 32])
def test_impossible_sum_is_refused_naming_group_and_bound(modulus):
    stack, layout = _quantized_stack(modulus=modulus)
    q = stack.transforms[0]
    level = fixedpoint.max_level(16)
    honest = stack.encode(layout.pack(np.zeros(3), 5, {}, 5))
    for index, group, bound in ((1, "update", 10), (3, "weight", 10), (4, "evaluation count", 10)):
        total = honest.copy()
        total[index] = fixedpoint.reduce(
            np.array([2 * (level + 1) + 1], dtype=np.int64).view(np.uint64), modulus
        )[0]
        q_bound = f"±2 × {bound:.6g}"
        with pytest.raises(
            ImpossibleSum, match=rf"cannot come from 2 honest parties: {group} coordinate {index} "
        ):
            stack.decode_sum(total, 2)
        with pytest.raises(ImpossibleSum) as refused:
            stack.decode_sum(total, 2)
        assert q_bound in str(refused.value) and "global model is unchanged" in str(refused.value)
        stack.decode_sum(total, 3)  # three parties can reach it
        stack.decode_sum(total)  # no contributor count: no check (analytics, old callers)
    # the most negative reading (two's complement −2^(k−1)) is refused too, not wrapped to positive
    total = honest.copy()
    total[0] = np.uint64(1 << (modulus - 1))
    with pytest.raises(ImpossibleSum, match="update coordinate 0"):
        stack.decode_sum(total, 4)
    assert q.scale[0] > 0


def test_impossible_sum_message_has_no_value():
    stack, layout = _quantized_stack()
    total = stack.encode(layout.pack(np.zeros(3), 5, {}, 5))
    total[2] = np.uint64(123456789)
    with pytest.raises(ImpossibleSum) as refused:
        stack.decode_sum(total, 1)
    assert "123456789" not in str(refused.value) and "1.23457e+08" not in str(refused.value)


def test_bad_contributor_counts_are_refused():
    stack, layout = _quantized_stack()
    total = stack.encode(layout.pack(np.zeros(3), 5, {}, 5))
    for count in (-1, True, 1.5):
        with pytest.raises(ImpossibleSum, match="non-negative integer"):
            stack.decode_sum(total, count)
    with pytest.raises(ImpossibleSum, match="shape"):
        stack.decode_sum(total[:3], 1)


def test_dp_noise_headroom_widens_the_bound_on_the_update_only():
    layout = VectorLayout(3)
    dp = DPNoise(1.0)
    stack = PrivacyStack.of([Clip(1.0), Quantize(16), dp, IntegerOnlySum()])
    stack.validate(StackContext(layout, 4, 4, 1.0))
    level = fixedpoint.max_level(16)
    headroom = dp.sum_headroom(4, 4)
    assert headroom[0] == dp.noise_bound(4, 4) + TAIL > 0 and headroom[3] == 0
    inside = int(4 * (level + 1) + headroom[0]) - 1
    total = np.zeros(layout.size, dtype=np.uint64)
    total[0] = fixedpoint.reduce(np.array([-inside], dtype=np.int64).view(np.uint64), 32)[0]
    stack.decode_sum(total, 4, 4)  # within the noise headroom
    total[0] = np.uint64(inside + 2)
    with pytest.raises(ImpossibleSum, match=r"update coordinate 0 .* plus .* of DP noise headroom"):
        stack.decode_sum(total, 4, 4)
    total[0] = 0
    total[3] = np.uint64(4 * (level + 1) + 1)  # the weight carries no noise
    with pytest.raises(ImpossibleSum, match="weight coordinate 3"):
        stack.decode_sum(total, 4, 4)


def test_noised_honest_sums_pass_the_check():
    layout = VectorLayout(200)
    stack = PrivacyStack.of([Clip(1.0), Quantize(12), DPNoise(2.0), IntegerOnlySum()])
    stack.validate(StackContext(layout, 5, 3, 1.0))
    ctx5 = RoundContext("0" * 32, 0, tuple(f"p{i}" for i in range(5)), layout.size, True, 3)
    stack.start_round(ctx5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        vectors = [layout.pack(np.clip(rng.normal(0, 1, 200), -1, 1) / 15, 1, {}, 1) for _ in range(5)]
        total = fixedpoint.reduce(sum(stack.encode(v) for v in vectors), 32)
        stack.decode_sum(total, 5, 5)
