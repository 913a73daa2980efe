"""Synthetic embedding-like vectors for bench/search_scale.py: a seeded generator, memmaps, exact neighbours.

The generator, for n vectors of dimension D from `clusters` clusters:

    g          one shared unit direction (real embeddings share a large common component)
    B          a (rank, D) Gaussian basis / sqrt(D), shared by all clusters   (the "manifold" the data vary on)
    mu_c       = unit(spread_shared * g + u_c)                                (cluster centres, c = 0..clusters-1)
                 u_c ~ N(0, I_D / D), or N(0, I_rank / rank) B when the centres lie in the same subspace
    lambda_i   = i ** -decay, i = 1..rank, scaled to unit norm                (a decaying spectrum, as in real embeddings)
    x          = unit(mu_c + noise * (lambda * z) B + floor * e),  c uniform, z ~ N(0, I_rank), e ~ N(0, I_D / D)

Everything is float32 and comes from numpy's PCG64 seeded with (seed, stream, chunk): the database is stream 0,
queries stream 1, so queries are held out (never in the database) yet drawn from the same distribution, and a chunk
is the same whatever the chunk size of the caller. The two regimes differ in how far apart the clusters are against
the within-cluster spread, and in the rank and decay of that spread (its intrinsic dimension):

- easy: 1,000 well-separated clusters varying along 32 directions: a collection of many distinct places and
  land-cover types (fields, forests, towns, coasts), where a query's true neighbours are nearly all of its own kind.
- hard: 1,000 overlapping clusters close to a common centre, varying along 256 directions with a slowly decaying
  spectrum: a collection of near-uniform texture (open ocean, desert, one crop type over a whole state), where
  the neighbours cross cluster boundaries and a coarse partition (inverted lists) is a poor guide.
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CHUNK_ROWS = 65536


@dataclass(frozen=True)
class Regime:
    clusters: int
    spread_shared: float  # weight of the shared direction in a centre: larger = centres closer together
    rank: int  # directions the within-cluster variation spans (capped at D)
    decay: float  # spectrum exponent: smaller = flatter = higher intrinsic dimension
    noise: float  # norm of the within-cluster variation, against centres of norm about 1
    floor: float  # isotropic noise so that no vector lies exactly in a subspace
    centres_in_subspace: bool  # centres vary along the same directions as the points (same geometry at any D)


REGIMES = {
    "easy": Regime(clusters=1000, spread_shared=1.0, rank=32, decay=0.5, noise=0.35, floor=0.05,
                   centres_in_subspace=False),
    "hard": Regime(clusters=1000, spread_shared=2.5, rank=256, decay=0.35, noise=0.85, floor=0.1,
                   centres_in_subspace=True),
}
REPRESENTS = {
    "easy": "many distinct places / land-cover types: well-separated clusters, low intrinsic dimension",
    "hard": "near-uniform texture (ocean, desert, one crop): overlapping clusters, high intrinsic dimension",
}


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class Generator:
    """The regime's fixed parts (centres, basis, spectrum), then any chunk of any stream on demand."""

    def __init__(self, regime: Regime, dim: int, *, seed: int = 0):
        self.regime, self.dim, self.seed = regime, dim, seed
        rng = np.random.default_rng([seed, 99])
        shared = _unit(rng.standard_normal((1, dim), dtype=np.float32))
        rank = min(regime.rank, dim)
        self.basis = (rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(dim))  # (R, D)
        if regime.centres_in_subspace:
            offsets = rng.standard_normal((regime.clusters, rank), dtype=np.float32) / np.sqrt(rank) @ self.basis
        else:
            offsets = rng.standard_normal((regime.clusters, dim), dtype=np.float32) / np.sqrt(dim)
        self.centres = _unit(regime.spread_shared * shared + offsets).astype(np.float32)  # (C, D)
        spectrum = np.arange(1, rank + 1, dtype=np.float32) ** -regime.decay
        self.spectrum = (spectrum / np.linalg.norm(spectrum)).astype(np.float32)  # (R,)

    def chunk(self, stream: int, index: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (rows, D) float32 unit-norm, cluster labels (rows,) int32) for chunk `index` of `stream`."""
        rng = np.random.default_rng([self.seed, stream, index])
        labels = rng.integers(0, self.regime.clusters, size=rows, dtype=np.int32)
        latent = rng.standard_normal((rows, len(self.spectrum)), dtype=np.float32) * self.spectrum
        floor = rng.standard_normal((rows, self.dim), dtype=np.float32) * (self.regime.floor / np.sqrt(self.dim))
        vectors = self.centres[labels] + self.regime.noise * (latent @ self.basis) + floor
        return _unit(vectors).astype(np.float32), labels


@dataclass
class Dataset:
    """A database memmap (a .npy file, so autofaiss can read it too), its labels, queries and exact top-k."""

    data_dir: Path
    base: np.ndarray  # (N, D) np.memmap
    labels: np.ndarray  # (N,)
    queries: np.ndarray  # (Q, D)
    query_labels: np.ndarray  # (Q,)
    truth: np.ndarray  # (Q, k) exact row numbers, best first
    generate_s: float
    truth_s: float

    @property
    def embeddings_dir(self) -> Path:
        return self.data_dir / "embeddings"


def _write_base(gen: Generator, path: Path, n: int) -> np.ndarray:
    base = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, gen.dim))
    labels = np.empty(n, dtype=np.int32)
    for index, start in enumerate(range(0, n, CHUNK_ROWS)):
        rows = min(CHUNK_ROWS, n - start)
        base[start:start + rows], labels[start:start + rows] = gen.chunk(0, index, rows)
    base.flush()
    return labels


def _queries(gen: Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [gen.chunk(1, index, min(CHUNK_ROWS, count - start))
             for index, start in enumerate(range(0, count, CHUNK_ROWS))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k inner products with faiss IndexFlatIP, the database streamed through RAM in chunks."""
    import faiss

    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(base), CHUNK_ROWS):
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(np.ascontiguousarray(base[start:start + CHUNK_ROWS]))
        scores, rows = flat.search(queries, k)
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate([best_rows, rows + start], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return best_rows


def load_or_make(work_dir: Path, regime_name: str, n: int, dim: int, *, queries: int, k: int = 10,
                 seed: int = 0) -> Dataset:
    """Generate (or reuse, when the same recipe is already on disk) the database, queries and ground truth."""
    import time

    regime = REGIMES[regime_name]
    recipe = {"regime": regime_name, **asdict(regime), "n": n, "dim": dim, "queries": queries, "k": k, "seed": seed}
    data_dir = work_dir / f"search-{regime_name}-{n}x{dim}-s{seed}"
    meta_path = data_dir / "recipe.json"
    base_path = data_dir / "embeddings" / "base.npy"
    if meta_path.exists() and json.loads(meta_path.read_text())["recipe"] == recipe:
        meta = json.loads(meta_path.read_text())
        generate_s, truth_s = meta["generate_s"], meta["truth_s"]
    else:
        (data_dir / "embeddings").mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
        gen = Generator(regime, dim, seed=seed)
        started = time.perf_counter()
        labels = _write_base(gen, base_path, n)
        query_vectors, query_labels = _queries(gen, queries)
        generate_s = time.perf_counter() - started
        started = time.perf_counter()
        base = np.load(base_path, mmap_mode="r")
        truth = exact_topk(base, query_vectors, k)
        truth_s = time.perf_counter() - started
        np.save(data_dir / "labels.npy", labels)
        np.save(data_dir / "queries.npy", query_vectors)
        np.save(data_dir / "query_labels.npy", query_labels)
        np.save(data_dir / "truth.npy", truth)
        meta_path.write_text(json.dumps({"recipe": recipe, "generate_s": generate_s, "truth_s": truth_s}))
    return Dataset(data_dir, np.load(base_path, mmap_mode="r"), np.load(data_dir / "labels.npy"),
                   np.load(data_dir / "queries.npy"), np.load(data_dir / "query_labels.npy"),
                   np.load(data_dir / "truth.npy"), generate_s, truth_s)


def own_cluster_share(data: Dataset) -> float:
    """Mean share of a query's exact top-k that lies in the query's own cluster."""
    return float((data.labels[data.truth] == data.query_labels[:, None]).mean())
