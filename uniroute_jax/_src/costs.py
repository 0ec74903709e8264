"""Per-request cost: what one prompt would cost on each LLM, from token prices.

    cost[x, h] = input_tokens(x) * input_price(h) + expected_output_tokens(h) * output_price(h)

The input length is known when the request arrives; the output length is not, so each LLM
carries an expected number of output tokens (its mean on past traffic, say). Prices are per token,
in whatever currency the caller uses: LiteLLM's model cost map (`litellm.model_cost`, keys
`input_cost_per_token` / `output_cost_per_token`) or the caller's own table. Everything here runs
on the host in NumPy: one request's costs are a handful of multiply-adds.

Example:
  >>> p = prices(["small", "large"], input_price=[1e-7, 3e-6], output_price=[4e-7, 1.5e-5],
  ...            expected_output_tokens=[200, 300])
  >>> request_costs(p, [1000]).round(7).tolist()
  [[0.00018, 0.0075]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation

INPUT_PRICE_KEY = "input_cost_per_token"
OUTPUT_PRICE_KEY = "output_cost_per_token"


class Prices(NamedTuple):
    """Token prices of a list of LLMs."""

    names: tuple[str, ...]  # [n_models]
    input_price: np.ndarray  # [n_models] price per input token, >= 0
    output_price: np.ndarray  # [n_models] price per output token, >= 0
    expected_output_tokens: np.ndarray  # [n_models] expected output tokens per request, >= 0

    def select(self, names: Sequence[str]) -> Prices:
        """The prices of `names`, in that order."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ValueError(f"names {missing} have no price; priced models are {list(self.names)}")
        idx = [self.names.index(n) for n in names]
        return Prices(tuple(names), self.input_price[idx], self.output_price[idx], self.expected_output_tokens[idx])


def _names(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(f"names must be a list of model names, got the string {names!r}")
    names = tuple(names)
    for n in names:
        if not isinstance(n, str) or not n:
            raise TypeError(f"names must be non-empty strings, got {n!r}")
    return names


def _per_model(values, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values, np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    return validation.nonnegative(validation.float_array(arr, name, shape=(n,), dtype=np.float64), name)


def prices(names: Sequence[str], input_price: ArrayLike, output_price: ArrayLike,
           expected_output_tokens: ArrayLike) -> Prices:
    """Checked `Prices`; each of the three arrays is `[n_models]` or one number for all."""
    names = _names(names)
    n = len(names)
    return Prices(names, _per_model(input_price, "input_price", n), _per_model(output_price, "output_price", n),
                  _per_model(expected_output_tokens, "expected_output_tokens", n))


def prices_from_cost_map(names: Sequence[str], cost_map: Mapping[str, Mapping], expected_output_tokens,
                         *, keys: Mapping[str, str] | None = None) -> Prices:
    """Prices of `names` read from a LiteLLM-style cost map.

    Args:
      names: [n_models] model names.
      cost_map: model key -> entry holding `input_cost_per_token` and `output_cost_per_token`
        (the layout of `litellm.model_cost`).
      expected_output_tokens: [n_models] numbers, one number for all, or a mapping name -> number.
      keys: optional name -> cost-map key. Without an entry, a name is looked up as it is, then
        without its provider prefix (`"openai/gpt-4o-mini"` -> `"gpt-4o-mini"`).

    Raises:
      ValueError naming the models the map does not price, or the entry, model and field of a
      malformed price.
    """
    names = _names(names)
    keys = dict(keys or {})
    rows, missing = [], []
    for n in names:
        candidates = [keys[n]] if n in keys else [n, n.split("/", 1)[-1]]
        key = next((c for c in candidates if c in cost_map), None)
        entry = None if key is None else cost_map[key]
        where = f"cost map entry {key!r} (model {n!r})"
        if key is not None and not isinstance(entry, Mapping):
            raise ValueError(f"{where}: is a {type(entry).__name__}, not a mapping with {INPUT_PRICE_KEY} and "
                             f"{OUTPUT_PRICE_KEY}")
        if entry is None or INPUT_PRICE_KEY not in entry or OUTPUT_PRICE_KEY not in entry:
            missing.append(n)
            continue
        rows.append(tuple(_price(entry[field], where, field) for field in (INPUT_PRICE_KEY, OUTPUT_PRICE_KEY)))
    if missing:
        raise ValueError(f"the cost map has no {INPUT_PRICE_KEY}/{OUTPUT_PRICE_KEY} for {missing}; "
                         "give their prices with `prices(...)` or map them with keys=")
    if isinstance(expected_output_tokens, Mapping):
        absent = [n for n in names if n not in expected_output_tokens]
        if absent:
            raise ValueError(f"expected_output_tokens has no entry for {absent}")
        expected_output_tokens = [expected_output_tokens[n] for n in names]
    rows = np.asarray(rows, np.float64).reshape(len(names), 2)
    return prices(names, rows[:, 0], rows[:, 1], expected_output_tokens)


def _price(value, where: str, field: str) -> float:
    """A per-token price read from a cost-map entry: a finite number >= 0, or a ValueError naming it."""
    try:
        price = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        price = None
    if price is None or not math.isfinite(price) or price < 0:
        raise ValueError(f"{where}: {field} is {value!r}, not a number >= 0")
    return price


def request_costs(p: Prices, input_tokens: ArrayLike) -> np.ndarray:
    """Cost of each request on each model, `[n_prompts, n_models]` float64.

    Args:
      p: the models' `Prices` (columns follow `p.names`).
      input_tokens: [n_prompts] input length of each request in tokens, >= 0.
    """
    if not isinstance(p, Prices):
        raise TypeError(f"p must be Prices (see prices()), got {type(p).__name__}")
    tokens = validation.nonnegative(validation.float_array(input_tokens, "input_tokens", ndim=1,
                                                           dtype=np.float64), "input_tokens")
    return tokens[:, None] * p.input_price[None, :] + (p.expected_output_tokens * p.output_price)[None, :]


def estimate_tokens(text: str) -> int:
    """A tokenizer-free length estimate: about four UTF-8 bytes per token for English text.

    Good to within tens of percent on prose, which is as well as the expected output length is
    known; pass your provider's tokenizer where prices are large enough for that to matter.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return math.ceil(len(text.encode("utf-8")) / 4)
