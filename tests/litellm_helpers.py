"""Shared pieces of the LiteLLM tests: a tiny deterministic embedder and a fitted text router."""

import zlib

import numpy as np

import uniroute_jax as ur

TOPICS = {
    "math": ["add", "sum", "integral", "equation", "solve", "number", "prime", "multiply"],
    "code": ["python", "function", "bug", "compile", "rust", "loop", "class", "api"],
    "prose": ["poem", "story", "letter", "essay", "tone", "rhyme", "novel", "verse"],
    "facts": ["capital", "year", "river", "author", "country", "planet", "king", "war"],
}
FILLER = ["please", "the", "a", "quickly", "now", "my", "for", "me", "with", "about"]
NAMES = ["llm-small", "llm-code", "llm-large"]
COSTS = [0.1, 0.4, 1.0]


class HashEmbedder:
    """Bag of hashed words: each word's vector is seeded by its CRC32; rows are unit-normalised."""

    def __init__(self, dim: int = 24):
        self.dim = dim
        self.calls = 0

    def word(self, w: str) -> np.ndarray:
        return np.random.default_rng(zlib.crc32(w.encode())).standard_normal(self.dim)

    def __call__(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            v = sum((self.word(w) for w in t.lower().split()), np.zeros(self.dim))
            out[i] = v / max(np.linalg.norm(v), 1e-9)
        return out


def make_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    kinds = list(TOPICS)
    texts = []
    for i in range(n):
        words = list(rng.choice(TOPICS[kinds[i % 4]], 3)) + list(rng.choice(FILLER, int(rng.integers(1, 4))))
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts


def fitted(embedder: HashEmbedder):
    """A router with 8 clusters over hashed texts and a 3-model pool with topic-dependent errors."""
    train, val = make_texts(400, 0), make_texts(300, 1)
    router = ur.UniRouter.fit(embedder(train), 8, seed=0, n_init=2)
    p = np.array([[.3, .5, .9], [.2, .9, .9], [.9, .6, .95], [.8, .5, .9]])  # P(correct) per topic
    rng = np.random.default_rng(2)
    correct = (rng.random((300, 3)) < p[np.arange(300) % 4]).astype(np.float32)
    pool = router.represent(embedder(val), correct, NAMES, COSTS)
    return router, pool
