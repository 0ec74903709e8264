"""A small demo router and pool for the LiteLLM integration, fitted on synthetic prompts and labels.

Prompts come from templates in four kinds (arithmetic, code, writing, facts) and are embedded
with all-MiniLM-L6-v2, so the demo routes real text. Three made-up LLMs answer each kind
correctly with fixed probabilities: `demo-small` (cheap, good at writing and facts),
`demo-coder` (mid-priced, good at code), `demo-large` (dear, good at everything). Their
correctness is drawn once, their rows represented from a validation split: the files are what
`uniroute fit` + `uniroute add-model` would write for such a pool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KINDS = {
    "math": ["What is {a} + {b}?", "Solve for x: {a}x + {b} = {c}.", "Compute {a} times {b}.",
             "What is the derivative of x^{a} + {b}x?", "Is {c} a prime number? Show your reasoning.",
             "What is {a} percent of {c}?"],
    "code": ["Write a Python function that {task}.", "How do I {task} in JavaScript?",
             "Write a SQL query that {task}.", "Explain this error in my Rust code: {err}",
             "Refactor this Go function so that it {task}."],
    "writing": ["Write a short poem about {thing}.", "Write a friendly email inviting {who} to {thing}.",
                "Give me three taglines for a shop that sells {thing}.",
                "Rewrite this sentence to sound more polite: 'Send me {thing} now.'"],
    "facts": ["What is the capital of {country}?", "Who wrote {book}?", "In which year did {event}?",
              "What is the population of {country}, roughly?", "Which language is spoken in {country}?"],
}
FILL = {
    "task": ["reverses a linked list", "parses a CSV file", "removes duplicates from a list",
             "counts words in a text", "merges two sorted arrays", "reads a JSON config",
             "finds the longest common prefix", "computes a moving average"],
    "err": ["borrowed value does not live long enough", "mismatched types", "cannot move out of index",
            "use of moved value"],
    "thing": ["the sea", "autumn leaves", "a tea party", "old bicycles", "mountain hiking", "board games",
              "coffee", "the night sky"],
    "who": ["my neighbours", "the team", "an old friend", "my parents"],
    "country": ["France", "Kenya", "Peru", "Japan", "Norway", "Vietnam", "Chile", "Egypt"],
    "book": ["Pride and Prejudice", "War and Peace", "Don Quixote", "The Odyssey", "Moby-Dick"],
    "event": ["the Berlin Wall fall", "the first Moon landing take place", "the French Revolution begin",
              "the Titanic sink"],
}
# P(correct) of each demo LLM per kind, and its cost per request (USD-like units).
MODELS = {"demo-small": ({"math": .35, "code": .30, "writing": .90, "facts": .80}, 0.1),
          "demo-coder": ({"math": .60, "code": .92, "writing": .70, "facts": .60}, 0.4),
          "demo-large": ({"math": .93, "code": .94, "writing": .93, "facts": .92}, 1.0)}


def demo_prompts(n_per_kind: int, seed: int) -> tuple[list[str], list[str]]:
    """`(texts, kinds)`: `n_per_kind` templated prompts of each kind."""
    rng = np.random.default_rng(seed)
    texts, kinds = [], []
    for kind, templates in KINDS.items():
        for _ in range(n_per_kind):
            t = templates[rng.integers(len(templates))]
            words = {k: v[rng.integers(len(v))] for k, v in FILL.items()}
            nums = {k: int(rng.integers(2, 999)) for k in "abc"}
            texts.append(t.format(**words, **nums))
            kinds.append(kind)
    return texts, kinds


def write_demo_files(out: str | Path, *, n_per_kind: int = 80, n_clusters: int = 8, seed: int = 0,
                     embedder=None) -> dict[str, Path]:
    """Writes `router.npz`, `pool.npz` and `prompts.txt` (a traffic sample) into `out`; returns the paths."""
    from uniroute_jax._src.embedding import TextEmbedder, embed_texts  # noqa: PLC0415
    from uniroute_jax._src.router import UniRouter  # noqa: PLC0415

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts, kinds = demo_prompts(n_per_kind, seed)
    x = embed_texts(texts, embedder if embedder is not None else TextEmbedder(progress=False, cache=False))
    rng = np.random.default_rng(seed + 1)
    perm = rng.permutation(len(texts))
    n_train = len(texts) // 2
    train, val = perm[:n_train], perm[n_train:]
    router = UniRouter.fit(x[train], n_clusters, seed=seed)
    p_correct = np.array([[MODELS[m][0][kinds[i]] for m in MODELS] for i in val])
    correct = (rng.random(p_correct.shape) < p_correct).astype(np.float32)
    pool = router.represent(x[val], correct, list(MODELS), [c for _, c in MODELS.values()])
    paths = {"router": router.save(out / "router.npz"), "pool": pool.save(out / "pool.npz")}
    sample = out / "prompts.txt"
    sample.write_text("\n".join(texts[i] for i in val) + "\n", encoding="utf-8")
    paths["prompts"] = sample
    return paths
