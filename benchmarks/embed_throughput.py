"""Prompt-embedding throughput of `TextEmbedder` (all-MiniLM-L6-v2 in JAX).

Reports compile time apart from run time and the median over repeats, for prompts of a few
token lengths; a second section times a cache hit. Prompts are synthetic word sequences so the
benchmark needs only the model weights (see `resolve_model_dir`).

Usage:
  python benchmarks/embed_throughput.py [--n 256] [--repeats 3] [--lengths 32 128 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from uniroute_jax import TextEmbedder

WORDS = ("route model prompt cost answer question cluster budget accuracy token embed "
         "query large language small router value sample").split()


def synthetic_prompts(n: int, n_words: int, seed: int) -> list[str]:
    """`n` distinct prompts of `n_words` words (at least as many word pieces)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=n_words)) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="prompts per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    print(f"{'tokens':>6} {'compile s':>10} {'run s (median)':>15} {'prompts/s':>10}")
    for length in args.lengths:
        # Prompts longer than the window, truncated to exactly `length` tokens.
        embedder = TextEmbedder(max_length=length, truncation="head",
                                batch_size=args.batch_size, cache=False, progress=False)
        warm = synthetic_prompts(args.batch_size, length, seed=0)
        start = time.perf_counter()
        embedder(warm)  # compiles this length bucket at the full batch size
        first = time.perf_counter() - start
        start = time.perf_counter()
        embedder(warm)
        compile_s = first - (time.perf_counter() - start)
        times = []
        for r in range(args.repeats):
            prompts = synthetic_prompts(args.n, length, seed=r + 1)
            start = time.perf_counter()
            embedder(prompts)
            times.append(time.perf_counter() - start)
        run = statistics.median(times)
        print(f"{length:>6} {compile_s:>10.2f} {run:>15.3f} {args.n / run:>10.1f}")
    print(f"model: {embedder.model_dir}, batch size {args.batch_size}")

    with tempfile.TemporaryDirectory() as cache_dir:
        cached = TextEmbedder(max_length=max(args.lengths), batch_size=args.batch_size,
                              cache_dir=cache_dir, progress=False)
        prompts = synthetic_prompts(args.n, min(args.lengths), seed=99)
        cached(prompts)
        start = time.perf_counter()
        cached(prompts)
        hit = time.perf_counter() - start
        print(f"cache hit: {args.n} prompts in {hit * 1e3:.1f} ms "
              f"({args.n / hit:.0f} prompts/s, model calls {cached.forward_calls})")


if __name__ == "__main__":
    main()
