import numpy as np
import pytest

from uniroute_jax._src.costs import estimate_tokens, prices, prices_from_cost_map, request_costs


def test_request_costs_is_input_plus_expected_output():
    p = prices(["s", "l"], [1e-7, 3e-6], [4e-7, 1.5e-5], [200, 300])
    got = request_costs(p, [0, 1000, 50])
    for j, t in enumerate([0, 1000, 50]):
        for m in range(2):
            want = t * p.input_price[m] + p.expected_output_tokens[m] * p.output_price[m]
            assert got[j, m] == pytest.approx(want, rel=1e-12)
    assert request_costs(p.select(["l"]), [10]).shape == (1, 1)


def test_prices_from_cost_map_reads_litellm_layout_and_names_missing_models():
    cmap = {"gpt-x": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
            "prov/other": {"input_cost_per_token": 5e-7, "output_cost_per_token": 1e-6}}
    p = prices_from_cost_map(["openai/gpt-x", "prov/other"], cmap, {"openai/gpt-x": 10, "prov/other": 20})
    np.testing.assert_allclose(p.input_price, [1e-6, 5e-7])
    np.testing.assert_allclose(p.expected_output_tokens, [10, 20])
    with pytest.raises(ValueError, match="no input_cost_per_token"):
        prices_from_cost_map(["nope"], cmap, 5)
    with pytest.raises(ValueError, match="expected_output_tokens must be >= 0"):
        prices(["a"], 1.0, 1.0, -1)
    with pytest.raises(TypeError, match="list of model names"):
        prices("a", 1.0, 1.0, 1)


def test_estimate_tokens():
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    with pytest.raises(TypeError, match="text must be a str"):
        estimate_tokens(3)


@pytest.mark.parametrize("entry, match", [
    ({"input_cost_per_token": "abc", "output_cost_per_token": 1e-6}, r"input_cost_per_token is 'abc', not a number"),
    ({"input_cost_per_token": None, "output_cost_per_token": 1e-6}, r"input_cost_per_token is None, not a number"),
    ({"input_cost_per_token": 1e-6, "output_cost_per_token": -2e-6}, r"output_cost_per_token is -2e-06, not .*>= 0"),
    ({"input_cost_per_token": float("nan"), "output_cost_per_token": 1e-6}, r"input_cost_per_token is nan"),
    ("1e-6 per token", r"is a str, not a mapping"),
])
def test_malformed_cost_map_entries_name_the_model_key_and_field(entry, match):
    cmap = {"gpt-x": entry, "good": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}
    with pytest.raises(ValueError, match=r"cost map entry 'gpt-x' \(model 'openai/gpt-x'\): " + match):
        prices_from_cost_map(["good", "openai/gpt-x"], cmap, 10)
