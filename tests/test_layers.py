import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securefl.codec import VectorLayout
from securefl.crypto import fixedpoint
from securefl.errors import ConfigError, UpdateError
from securefl.layers import Clip, Plain, PrivacyStack, Quantize, StackContext, build_layer, preset
from securefl.layers.base import SecureSum
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
