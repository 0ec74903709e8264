"""Bridges from uniroute-jax to the systems that serve LLM traffic (each behind an optional extra).

- `uniroute_jax.integrations.litellm`: a routing plugin for `litellm.Router` and the LiteLLM
  proxy (`pip install "uniroute-jax[litellm]"`).
"""
