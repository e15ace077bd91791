import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefl.codec import ArraySpec, VectorLayout, check_finite
from securefl.errors import UpdateError

float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    elements=st.floats(-1e6, 1e6, width=32),
)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.]{0,10}", fullmatch=True), float_arrays, min_size=1, max_size=5
    )
)
def test_dict_round_trip_keeps_names_shapes_dtypes(arrays):
    spec = ArraySpec.of(arrays)
    vector = spec.flatten(arrays)
    assert vector.shape == (sum(a.size for a in arrays.values()),)
    back = spec.unflatten(vector)
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype
        assert back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)


@given(st.lists(float_arrays, min_size=1, max_size=4))
def test_list_round_trip(arrays):
    spec = ArraySpec.of(arrays)
    back = spec.unflatten(spec.flatten(arrays))
    assert isinstance(back, list)
    for a, b in zip(arrays, back, strict=True):
        np.testing.assert_array_equal(a, b)


def test_torch_state_dict_round_trip():
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    state = module.state_dict()
    spec = ArraySpec.of(state)
    back = spec.unflatten(spec.flatten(state))
    assert list(back) == list(state)
    for name, tensor in state.items():
        np.testing.assert_array_equal(back[name], tensor.numpy())
        assert back[name].dtype == np.float32


def test_wrong_shape_is_named():
    spec = ArraySpec.of({"a": np.zeros((2, 3)), "b": np.zeros(4)})
    with pytest.raises(UpdateError, match=r"'a' has shape \(3, 2\), the model expects \(2, 3\)"):
        spec.flatten({"a": np.zeros((3, 2)), "b": np.zeros(4)})


def test_missing_and_unexpected_arrays_are_named():
    spec = ArraySpec.of({"a": np.zeros(2), "b": np.zeros(2)})
    with pytest.raises(UpdateError, match=r"missing \['b'\], unexpected \['c'\]"):
        spec.flatten({"a": np.zeros(2), "c": np.zeros(2)})


def test_integer_arrays_are_refused_with_the_reason():
    with pytest.raises(UpdateError, match="only floating-point arrays"):
        ArraySpec.of({"count": np.array([3], dtype=np.int64)})


def test_unflatten_wrong_length():
    spec = ArraySpec.of({"a": np.zeros(3)})
    with pytest.raises(UpdateError, match=r"the model needs \(3,\)"):
        spec.unflatten(np.zeros(4))


def test_spec_json_round_trip():
    spec = ArraySpec.of({"a": np.zeros((2, 3), np.float32), "b": np.zeros(1)})
    assert ArraySpec.from_json(spec.to_json()) == spec


def test_layout_pack_and_unpack_by_hand():
    layout = VectorLayout(2, ("loss",), ("accuracy",))
    a = layout.pack(np.array([1.0, 2.0]), 10, {"loss": 0.5}, 4, {"accuracy": 1.0})
    b = layout.pack(np.array([4.0, 8.0]), 30, {"loss": 0.1}, 6, {"accuracy": 0.5})
    np.testing.assert_array_equal(a, [10, 20, 10, 5, 4, 4])
    fused = layout.unpack_sum(a + b)
    # (10*[1,2] + 30*[4,8]) / 40 = [3.25, 6.5]; loss (5 + 3)/40; accuracy (4 + 3)/10
    np.testing.assert_allclose(fused.mean_delta, [3.25, 6.5])
    assert fused.total_weight == 40
    assert fused.train_metrics == pytest.approx({"loss": 0.2})
    assert fused.eval_metrics == pytest.approx({"accuracy": 0.7})
    assert fused.eval_count == 10


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_refused(bad):
    layout = VectorLayout(3)
    with pytest.raises(UpdateError, match="non-finite"):
        layout.pack(np.array([0.0, bad, 1.0]), 1, {})


def test_metrics_must_match_declaration():
    layout = VectorLayout(1, ("loss",))
    with pytest.raises(UpdateError, match="do not match the federation's declared"):
        layout.pack(np.zeros(1), 1, {"acc": 1.0})
    with pytest.raises(UpdateError, match="must be finite"):
        layout.pack(np.zeros(1), 1, {"loss": float("nan")})


def test_weight_must_be_positive():
    with pytest.raises(UpdateError, match="weight must be a positive"):
        VectorLayout(1).pack(np.zeros(1), 0, {})


def test_check_finite_names_first_bad_coordinate():
    with pytest.raises(UpdateError, match="coordinate 2"):
        check_finite(np.array([0.0, 1.0, np.nan, np.nan]), "x")
