"""Bridges from uniroute-jax to the systems that serve LLM traffic (each behind an optional extra).

- `uniroute_jax.integrations.litellm`: a routing plugin for `litellm.Router` and the LiteLLM
  proxy (`pip install "uniroute-jax[litellm]"`).
- `uniroute_jax.integrations.vllm_sr`: export a router and pool as a vLLM Semantic Router
  `kmeans` selector file (no extra needed).
"""
