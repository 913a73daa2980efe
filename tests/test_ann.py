"""Search at scale: the index chosen by size and budget, tuned to a recall target, kept up to date without
retraining, and the torch exact path agreeing with FAISS and with brute force."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import cli
from store import Store, StoreError, ann, faiss_index
from store.torch_exact import TorchExactIndex

DIM = 32
PROVENANCE = {"model": "synthetic", "dim": DIM, "normalization": "sat493m", "resolution": 224, "pooling": "cls"}


def clustered(n: int, *, dim: int = DIM, clusters: int = 50, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres: neighbours mostly share a centre, as similar places do."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)  # (N, D)


def fill(store: Store, vectors: np.ndarray, *, first: int = 0) -> list[int]:
    """Add vectors as if an index run had embedded files image-<n>.jpg."""
    records = [{"path": f"image-{first + row}.jpg", "size": 1, "mtime": 0.0, "sha256": str(first + row),
                "width": 8, "height": 8} for row in range(len(vectors))]
    grids = np.zeros((len(vectors), 1, 1, 4), dtype=np.float32)  # (B, h, w, C)
    ids = []
    for start in range(0, len(vectors), 1000):
        ids += store.add_embeddings(records[start:start + 1000], vectors[start:start + 1000], grids[:1000])
    return ids


@pytest.fixture
def big_store(tmp_path, monkeypatch):
    """A 6,000-vector store: past the exact-search threshold once that is lowered for a fast test."""
    monkeypatch.setattr(ann, "EXACT_MAX_WORK", 2000 * DIM)
    store = Store.create(tmp_path / "store", provenance=PROVENANCE)
    fill(store, clustered(6000))
    store.finish_index()
    return store


# -- choice by size and budget -------------------------------------------------------------------
def test_small_collections_get_exact_search():
    plan = ann.plan_index(10_000, 1024)
    assert (plan.factory, plan.kind) == ("IDMap2,Flat", "flat")


def test_a_tight_budget_halves_the_exact_index_before_going_approximate():
    full = ann.plan_index(10_000, 1024).estimated_bytes
    plan = ann.plan_index(10_000, 1024, memory_bytes=full // 2 + 1_000_000)
    assert plan.factory == "IDMap2,SQfp16"
    assert plan.estimated_bytes <= full // 2 + 1_000_000
    # `info` shows this reason beside the index's "exact": false (faiss_index.describe): it must not say exact
    assert "not exact" in plan.reason and "float16" in plan.reason


@pytest.mark.parametrize("n, dim, budget", [(1_000_000, 1024, "4GiB"), (250_000, 4096, "2GiB"),
                                            (1_000_000, 1024, "700MB"), (10_000_000, 4096, "3GB")])
def test_large_collections_get_an_inverted_file_within_budget(n, dim, budget):
    limit = ann.parse_bytes(budget)
    plan = ann.plan_index(n, dim, memory_bytes=limit)
    assert plan.kind == "ivf" and plan.factory.startswith("IVF")
    assert plan.estimated_bytes <= limit
    assert ann.estimate_bytes(plan.factory, n, dim) == plan.estimated_bytes
    exact = ann.flat_bytes(n, dim)
    assert plan.estimated_bytes < exact  # compressed, not a flat index under another name


def test_codes_shrink_as_the_budget_does():
    factories = [ann.plan_index(1_000_000, 1024, memory_bytes=ann.parse_bytes(b)).factory
                 for b in ("4GB", "1GB", "700MB", "150MB")]
    assert factories == ["IVF2048,PQ256x4fs,Refine(SQ8)", "IVF2048,PQ256x4fs,Refine(SQ4)", "IVF2048,PQ512x4",
                         "IVF2048,PQ128x4"]  # codes alone: not fast-scan, which cannot take a removal
    assert ann.plan_index(1_000_000, 1024, memory_bytes=ann.parse_bytes("4GB"),
                          target_recall=0.99).factory.endswith("Refine(SQfp16)")


@pytest.mark.parametrize("n, dim", [(1_000_000, 1024), (250_000, 4096), (56, 32)])
def test_an_impossible_budget_says_what_would_work(n, dim):
    with pytest.raises(StoreError, match="raise --index-memory to ") as refused:
        ann.plan_index(n, dim, memory_bytes=1_000)
    suggested = str(refused.value).split("raise --index-memory to ")[1].split(" or more")[0]
    number, unit = suggested.split(" ")
    budget = ann.parse_bytes(number + unit)
    assert ann.plan_index(n, dim, memory_bytes=budget).estimated_bytes <= budget  # the suggestion works ...
    last_digit = ann.parse_bytes("1" + unit) / 10 ** len(number.partition(".")[2])
    with pytest.raises(StoreError):  # ... and is the least that does, to its last shown digit
        ann.plan_index(n, dim, memory_bytes=int(budget - last_digit))


def test_sizes_are_written_in_the_units_index_memory_reads():
    assert [ann.format_bytes(b) for b in (999, 4_560, 116_400_000, 4e9)] == ["999 bytes", "4.6 kB", "116.4 MB",
                                                                               "4.00 GB"]
    assert ann.format_bytes(4_501, up=True) == "4.6 kB" and ann.format_bytes(4_500, up=True) == "4.5 kB"


@pytest.mark.parametrize("text, expected", [("4GB", 4e9), ("512MiB", 512 * 2**20), ("2g", 2e9), ("1000", 1000)])
def test_memory_sizes_parse(text, expected):
    assert ann.parse_bytes(text) == int(expected)


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "4XB", "0.5"])
def test_bad_memory_sizes_are_refused(text):
    with pytest.raises(StoreError):
        ann.parse_bytes(text)


# -- tuning ----------------------------------------------------------------------------------------
def test_tuning_reaches_the_target_with_the_fewest_lists():
    vectors = clustered(8000, seed=1)
    ids = np.arange(100, 8100, dtype=np.int64)
    plan = ann.IndexPlan("IVF64,SQ8", "ivf", 0, "test")
    built = ann.build_index(vectors, ids, plan, target_recall=0.9)
    nprobe = built.params["nprobe"]
    assert built.recall >= 0.9
    assert 1 < nprobe < 64
    # recall checked independently, with queries the tuner never saw (perturbed collection vectors)
    rng = np.random.default_rng(7)
    queries = vectors[rng.choice(len(vectors), 200, replace=False)] + 0.05 * rng.standard_normal((200, DIM))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    _, found = built.index.search(queries, 10)
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]) >= 0.85
    # and one step fewer lists misses the target on the tuning queries
    assert any(p["nprobe"] < nprobe and r < 0.9 + 0.006 for p, r in built.tuning)  # aims a standard error above


def test_given_params_skip_tuning_but_recall_is_still_measured():
    vectors = clustered(5000, seed=2, clusters=500, spread=1.0)  # overlapping: one list is not enough
    plan = ann.IndexPlan("IVF32,SQ8", "ivf", 0, "test")
    built = ann.build_index(vectors, np.arange(5000), plan, params={"nprobe": 1})
    assert built.params == {"nprobe": 1} and built.tuning == []
    assert 0 < built.recall < 0.95


# -- the store: build, add and delete without retraining, retrain past the threshold -----------
def test_store_past_the_exact_threshold_builds_a_tuned_inverted_file(big_store):
    state = big_store.index_state()
    assert state["kind"] == "ivf" and state["trained_on"] == 6000
    assert state["recall_at_10"] >= ann.DEFAULT_RECALL
    described = big_store.info()["index"]
    assert described["recall_at_10"] == state["recall_at_10"] and described["params"]["nprobe"] >= 1


def test_adding_and_deleting_do_not_retrain(big_store, tmp_path):
    ivf_before = ann.nlist_of(big_store.index.cpu)
    centroids_before = faiss_index.ivf_of(big_store.index.cpu).quantizer.reconstruct_n(0, ivf_before)
    new_ids = fill(big_store, clustered(1000, seed=3), first=6000)
    gone = new_ids[:10]
    big_store.remove_images(gone)
    assert big_store.rebuild_reason() is None  # 6,990 < 2 x 6,000 and within 25 % of the tuned size
    big_store.finish_index()
    big_store.close()

    store = Store.open(tmp_path / "store")
    assert store.index_state()["trained_on"] == 6000
    assert np.array_equal(faiss_index.ivf_of(store.index.cpu).quantizer.reconstruct_n(0, ivf_before), centroids_before)
    assert store.index.ntotal == 6990
    vector = store.vector(new_ids[20])
    assert store.search(vector, k=1)[0]["id"] == new_ids[20]
    assert not set(gone) & {hit["id"] for hit in store.search(vector, k=1000)}


def test_growth_past_the_threshold_retrains(big_store):
    fill(big_store, clustered(6500, seed=4), first=6000)
    assert "grew" in big_store.rebuild_reason()
    big_store.finish_index()
    state = big_store.index_state()
    assert state["trained_on"] == 12500 and state["recall_at_10"] >= ann.DEFAULT_RECALL


def test_long_result_pages_fill_up_on_an_inverted_file(big_store):
    hits = big_store.search(big_store.vector(1), k=1000)
    assert len(hits) == 1000
    assert [h["rank"] for h in hits] == list(range(1, 1001))


# -- torch, FAISS and brute force agree ---------------------------------------------------------------
@pytest.mark.parametrize("dtype, least_overlap", [("float32", 1.0), ("float16", 0.98)])
def test_torch_exact_search_agrees_with_faiss_and_brute_force(dtype, least_overlap):
    import faiss

    vectors = clustered(3000, seed=5)
    queries = clustered(50, seed=6)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    flat.add_with_ids(vectors, ids)
    _, faiss_ids = flat.search(queries, 10)
    brute = ids[np.argsort(-(queries.astype(np.float64) @ vectors.T.astype(np.float64)), axis=1)[:, :10]]
    scores, torch_ids = TorchExactIndex(ids, vectors, device="cpu", dtype=dtype).search(queries, 10)

    assert np.array_equal(faiss_ids, brute)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(torch_ids, brute)])
    assert overlap >= least_overlap
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_torch_exact_search_pads_like_faiss_when_k_exceeds_the_collection():
    vectors = clustered(5)
    scores, ids = TorchExactIndex(np.arange(5), vectors, device="cpu", dtype="float32").search(vectors[:2], 8)
    assert (ids[:, 5:] == -1).all() and sorted(ids[0, :5]) == [0, 1, 2, 3, 4]


# -- the command line -----------------------------------------------------------------------------
def test_reindex_changes_the_index_and_info_reports_the_recall(big_store, tmp_path):
    store_dir = tmp_path / "store"
    big_store.close()
    runner = CliRunner()

    tight = runner.invoke(cli, ["reindex", "--store", str(store_dir), "--index-memory", "200KB",
                                "--target-recall", "0.9", "--json"])
    assert tight.exit_code == 0, tight.output
    described = json.loads(tight.output)
    assert described["factory"].endswith(("SQ4", "x4")) and described["file_bytes"] <= 200_000
    assert described["settings"]["memory_bytes"] == 200_000

    fixed = runner.invoke(cli, ["reindex", "--store", str(store_dir), "--index-type", "IVF16,SQfp16",
                                "--nprobe", "16"])
    assert fixed.exit_code == 0, fixed.output
    assert "IVF16,SQfp16" in fixed.output and "recall@10 1.000" in fixed.output

    info = runner.invoke(cli, ["info", "--store", str(store_dir)])
    assert "recall@10 1.000" in info.output and '"nprobe": 16' in info.output

    hits = runner.invoke(cli, ["search", "--id", "1", "--store", str(store_dir), "-k", "1000", "--nprobe", "2",
                               "--json"])
    assert hits.exit_code == 0, hits.output
    assert json.loads(hits.output)["results"][0]["id"] == 1


# -- the refine step: fast-scan codes re-ranked with scalar codes, ids removable -----------------
def refined(vectors: np.ndarray, ids: np.ndarray, factory: str = "IVF32,PQ16x4fs,Refine(SQfp16)"):
    plan = ann.user_plan(factory, len(vectors), vectors.shape[1])
    return ann.build_index(vectors, ids, plan, target_recall=0.95)


def test_the_automatic_choice_at_scale_re_ranks_fast_scan_codes():
    plan = ann.plan_index(1_000_000, 1024, memory_bytes=ann.parse_bytes("4GiB"))
    assert plan.factory == "IVF2048,PQ256x4fs,Refine(SQ8)"
    assert ann.estimate_bytes(plan.factory, 1_000_000, 1024) == plan.estimated_bytes
    # at the 7B's width the centroids are kept in float16: every single query reads all of them
    assert ann.plan_index(250_000, 4096, memory_bytes=ann.parse_bytes("2GiB")).factory == \
        "IVF1024(SQfp16),PQ512x4fs,Refine(SQ8)"
    assert not faiss_index.ivf_of(ann.new_index(64, ann.user_plan("IVF16,PQ16x4fs,Refine(SQ8)", 10_000, 64))).by_residual
    # narrow vectors re-rank with float16 codes (cheap there, and 8 bits cap recall on tight clusters)
    assert ann.plan_index(4_000_000, 64).factory.endswith("Refine(SQfp16)")


def test_a_refined_index_is_tuned_on_both_knobs_and_matches_brute_force():
    vectors = clustered(6000, seed=5)
    ids = np.arange(10, 6010, dtype=np.int64) * 3
    built = refined(vectors, ids)
    assert set(built.params) == {"nprobe", "k_factor"} and built.recall >= 0.95
    assert {tuple(sorted(p)) for p, _ in built.tuning} == {("k_factor", "nprobe")}
    # independent queries: recall@10 against brute force, and the scores are the re-ranked inner products
    rng = np.random.default_rng(9)
    queries = vectors[rng.choice(6000, 200, replace=False)] + 0.05 * rng.standard_normal((200, DIM))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    scores, found = built.index.search(queries, 10)
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]) >= 0.9
    by_id = dict(zip(ids.tolist(), vectors))
    exact = np.array([[queries[q] @ by_id[i] for i in row] for q, row in enumerate(found)])
    assert np.allclose(scores, exact, atol=2e-3)  # float16 codes: scores within rounding
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_a_refined_index_removes_and_re_adds_ids_and_survives_a_round_trip(tmp_path):
    vectors = clustered(5000, seed=6)
    ids = np.arange(5000, dtype=np.int64) + 1
    index = refined(vectors, ids).index
    gone = ids[:100]
    assert index.remove_ids(gone) == 100 and index.ntotal == 4900 and index.dead_rows() == 100
    _, found = index.search(vectors[:100], 10)
    assert not set(found.ravel()) & set(gone.tolist())
    index.add_with_ids(vectors[:50], gone[:50])  # the same ids again, as after an edited file
    assert index.ntotal == 4950 and set(faiss_index.index_ids(index)) == set(ids[100:]) | set(gone[:50])
    _, found = index.search(vectors[:50], 10)  # each re-added vector is found again among its own top 10
    assert (found == gone[:50, None]).any(axis=1).mean() >= 0.96
    faiss_index.write_index_atomic(index, tmp_path / "index.faiss")
    again = faiss_index.read_index(tmp_path / "index.faiss")
    assert (again.ntotal, again.dead_rows(), again.k_factor, again.nprobe) == (
        4950, 100, index.k_factor, index.nprobe)
    assert np.array_equal(again.search(vectors[:20], 10)[1], index.search(vectors[:20], 10)[1])
    assert faiss_index.describe(again)["type"].startswith("IndexIDMap(IndexRefine(IndexIVFPQFastScan")


def test_removed_vectors_codes_are_compacted_by_a_rebuild(big_store):
    assert "Refine(" in big_store.index_state()["factory"]
    big_store.remove_images(range(1, 1300))  # 1,299 dead rows > a quarter of the 4,701 live ones
    assert big_store.index.cpu.dead_rows() == 1299
    assert "removed vectors" in big_store.rebuild_reason()
    big_store.finish_index()
    assert big_store.index.cpu.dead_rows() == 0 and big_store.index.ntotal == 4701


@pytest.mark.parametrize("factory", ["PQ16x4fs,Refine(SQ8)", "IDMap2,IVF16,PQ16x4fs,Refine(SQ8)"])
def test_a_refine_step_needs_an_inverted_file_first(factory):
    with pytest.raises(StoreError, match="after an inverted file"):
        ann.user_plan(factory, 10_000, DIM)


@pytest.mark.parametrize("args, message", [
    (["--index-memory", "lots"], "not a size"),
    (["--index-type", "HNSW32"], "cannot remove ids"),
    (["--index-type", "IVF16,Bogus"], "cannot build index type 'IVF16,Bogus' for 32-dim vectors: could not parse"),
    (["--index-type", "IVF8192,Flat"], "cannot train index type 'IVF8192,Flat' on 6,000 vectors: Number of training points"),
    (["--index-memory", "1KB"], "raise --index-memory"),
])
def test_reindex_refuses_bad_settings_in_one_line(big_store, tmp_path, args, message):
    big_store.close()
    result = CliRunner().invoke(cli, ["reindex", "--store", str(tmp_path / "store"), *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output and ".cpp:" not in result.output


def test_shrinking_by_half_retrains_and_below_the_threshold_goes_exact(big_store, monkeypatch):
    monkeypatch.setattr(ann, "MIN_TRAIN_VECTORS", 1000)
    big_store.remove_images(range(1, 3501))
    assert "shrank" in big_store.rebuild_reason()
    big_store.finish_index()
    assert big_store.index_state()["trained_on"] == 2500
    big_store.remove_images(range(3501, 4501))
    assert "calls for IDMap2,Flat" in big_store.rebuild_reason()
    big_store.finish_index()
    assert big_store.index_state()["kind"] == "flat" and big_store.index.ntotal == 1500


# -- kept true through removals, kills and refusals ------------------------------------------------
def reembed(store: Store, ids, vectors) -> list[int]:
    """New vectors for images already in the store, under their ids, as a run re-embedding changed files does."""
    records = [{"path": f"image-{image_id - 1}.jpg", "size": 2, "mtime": 1.0, "sha256": f"new-{image_id}",
                "width": 8, "height": 8, "image_id": image_id} for image_id in ids]
    return store.add_embeddings(records, vectors, np.zeros((len(ids), 1, 1, 4), dtype=np.float32))


def found_as_own_nearest(store: Store, ids, vectors) -> int:
    return sum(store.search(vector, k=1)[0]["id"] == image_id for image_id, vector in zip(ids, vectors))


def test_codes_alone_are_planned_without_fast_scan_and_keep_what_is_added_after_a_removal(big_store):
    """faiss 1.15 stores codes added to a fast-scan list after a removal wrongly (20 of 50 found, checked when
    this was written); the same 4-bit codes without fast-scan do not."""
    assert ann.plan_index(1_000_000, 1024, memory_bytes=ann.parse_bytes("700MB")).factory == "IVF2048,PQ512x4"
    big_store.reindex(factory="IVF16,PQ32x4", params={"nprobe": 16})  # every list probed: only codes can miss
    changed, added = clustered(50, seed=5), clustered(50, seed=6)
    ids = reembed(big_store, list(range(1, 51)), changed)  # removed from their lists, then added again
    new_ids = fill(big_store, added, first=9000)
    untouched = found_as_own_nearest(big_store, range(101, 151), clustered(6000)[100:150])  # what the codes allow
    assert found_as_own_nearest(big_store, ids, changed) >= untouched - 4
    assert found_as_own_nearest(big_store, new_ids, added) >= untouched - 4


@pytest.mark.parametrize("factory, message", [("HNSW32,Flat", "graph indexes"), ("IDMap2,HNSW32,SQ8", "graph indexes"),
                                              ("IVF16,PQ16x4fs", "fast-scan codes without a refine step")])
def test_index_types_that_cannot_take_a_removal_are_refused(factory, message):
    with pytest.raises(StoreError, match=message):
        ann.user_plan(factory, 10_000, DIM)
    assert ann.user_plan("IVF64_HNSW32,SQ8", 10_000, DIM).factory == "IVF64_HNSW32,SQ8"  # a graph coarse quantiser


def test_an_older_fast_scan_only_index_is_rebuilt_after_the_next_run(big_store):
    state = dict(big_store.index_state(), factory="IVF16,PQ16x4fs", kind="ivf")  # as an older lookalike planned
    from store.catalogue import set_meta

    set_meta(big_store.db, "index_state", state)
    assert "loses vectors added after a removal" in big_store.rebuild_reason()


def test_a_re_embedded_image_is_found_by_its_new_vector_after_a_kill_before_the_index_was_saved(big_store, tmp_path):
    ids = reembed(big_store, [1, 2, 3], clustered(3, seed=7))  # the catalogue has the new vectors now
    big_store.db.close()  # killed: no finish_index, no save; the index file still holds the old vectors
    store = Store.open(tmp_path / "store")
    assert [store.search(store.vector(i), k=1)[0]["id"] for i in ids] == ids
    assert store.search(store.vector(ids[0]), k=1)[0]["score"] > 0.999


def test_index_rebuild_with_a_type_that_needs_training_leaves_a_working_store(big_store, tmp_path):
    big_store.reindex(factory="IVF64,Flat")
    big_store.close()
    store = Store.create(tmp_path / "store", provenance=PROVENANCE, rebuild=True)  # empties it: 0 to train on
    assert store.count_images() == 0 and faiss_index.describe(store.index.cpu)["exact"]
    ids = fill(store, clustered(5, seed=8))
    assert store.search(store.vector(ids[2]), k=1)[0]["id"] == ids[2]
    store.finish_index()  # still too few to train: kept exact, with a warning, and saved
    store.close()
    assert Store.open(tmp_path / "store").index.ntotal == 5


def test_a_refused_reindex_keeps_the_settings_that_work(big_store):
    before = big_store.index_settings()
    with pytest.raises(StoreError, match="cannot train"):
        big_store.reindex(factory="IVF8192,Flat")
    assert big_store.index_settings() == before


def test_a_reindex_killed_while_it_builds_keeps_the_settings_that_work(big_store):
    import subprocess
    import sys
    import textwrap

    from helpers import REPO_ROOT

    before, store_dir = big_store.index_settings(), big_store.store_dir
    big_store.close()
    killed = textwrap.dedent(f"""
        import os, signal
        from store import Store, indexing
        indexing.IndexedStore._build_index = lambda self, **_: os.kill(os.getpid(), signal.SIGKILL)  # kill -9 there
        Store.open({str(store_dir)!r}).reindex(factory="IVF16,Flat", params={{}})
    """)
    result = subprocess.run([sys.executable, "-c", killed], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    store = Store.open(store_dir)
    assert store.index_settings() == before and store.rebuild_reason() is None  # no slow build left to do
    store.close()


def test_vectors_for_ids_gone_meanwhile_are_an_empty_matrix(big_store):
    ids, vectors = big_store._vectors_for(np.array([10**9]))
    assert ids.shape == (0,) and vectors.shape == (0, DIM)


def test_an_approximate_index_is_not_described_as_exact():
    flat, pq = (faiss_index.describe(ann.new_index(DIM, ann.user_plan(f, 10_000, DIM))) for f in ("Flat", "PQ8"))
    assert flat["exact"] and flat["type"] == "IndexIDMap2(IndexFlat)"
    assert not pq["exact"] and pq["type"] == "IndexIDMap2(IndexPQ)"


def test_nprobe_on_an_exact_index_is_one_line(tmp_path):
    store = Store.create(tmp_path / "store", provenance=PROVENANCE)
    fill(store, clustered(100))
    store.finish_index()
    store.close()
    result = CliRunner().invoke(cli, ["reindex", "--store", str(tmp_path / "store"), "--nprobe", "4"])
    assert result.exit_code == 1 and "no lists to probe" in result.output and "Traceback" not in result.output
    assert Store.open(tmp_path / "store").index_settings() == {}


def test_a_reindex_killed_as_it_writes_the_file_leaves_a_record_that_matches_it(big_store, tmp_path, monkeypatch):
    """The record of what was built is kept once the file holds it: killed before, the store describes the index
    it still has, not one it never saved; and keeps the settings that index was built with (a reindex is kept
    whole or not at all: the next run has no slow build to do that the user had stopped)."""
    from store import faiss_index

    before = big_store.index_state()["factory"]
    big_store.close()

    def killed(index, path):
        raise KeyboardInterrupt  # as kill -9 inside the write: the old file stays (the write is atomic)

    monkeypatch.setattr(faiss_index, "write_index_atomic", killed)
    store = Store.open(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        store.reindex(factory="IVF16,SQfp16")
    store.close()
    monkeypatch.undo()
    monkeypatch.setattr(ann, "EXACT_MAX_WORK", 2000 * DIM)
    store = Store.open(tmp_path / "store")
    assert store.index_state()["factory"] == before
    assert store.rebuild_reason() is None
    store.close()


def test_a_budget_nothing_fits_is_refused_before_it_is_kept_even_on_an_empty_store(tmp_path):
    store = Store.create(tmp_path / "store", provenance=PROVENANCE)
    with pytest.raises(StoreError, match="fits in"):
        store.set_index_settings(memory_bytes=4)  # meant 4GB: no index of even one vector fits
    assert store.index_settings() == {}
    store.close()


def test_a_budget_nothing_fits_is_refused_beside_a_named_type_too(big_store):
    """A named type overrides the budget's choice (it may exceed it), but a budget that no index fits is kept
    for later runs and `--index-type auto` only to fail them."""
    with pytest.raises(StoreError, match="fits in"):
        big_store.set_index_settings(factory="IVF16,SQfp16", memory_bytes=4)
    assert "memory_bytes" not in big_store.index_settings() and "factory" not in big_store.index_settings()
    settings = big_store.set_index_settings(factory="IVF16,SQfp16", memory_bytes=150_000)  # the type is over it
    assert (settings["factory"], settings["memory_bytes"]) == ("IVF16,SQfp16", 150_000)


@pytest.mark.parametrize("factory, message", [
    ("IDMap2,IVF64,Flat", r"an inverted file keeps ids itself; leave out the IDMap \(--index-type IVF64,Flat\)"),
    ("IVF64,Flat,RFlat", "RFlat cannot take ids; refine with Refine"),
    ("IVF64,PQ8x4fs,RFlat", "RFlat cannot take ids")])
def test_index_types_that_would_be_searched_wrong_or_cannot_keep_ids_are_refused(factory, message):
    """An id-mapped inverted file was searched as exact (--nprobe and the tuned nprobe ignored); RFlat ended the
    run in a faiss traceback from add_with_ids."""
    with pytest.raises(StoreError, match=message):
        ann.user_plan(factory, 10_000, DIM)


def test_an_index_file_of_other_vectors_is_rebuilt_not_a_traceback(tmp_path, caplog):
    """An index.faiss copied in from a store of another dimension: faiss asserted on the first search."""
    import faiss

    store = Store.create(tmp_path / "store", provenance=PROVENANCE)
    vectors = clustered(200)
    ids = fill(store, vectors)
    store.finish_index()
    store.close()
    faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(16)), str(tmp_path / "store" / "index.faiss"))
    reopened = Store.open(tmp_path / "store")
    try:
        assert found_as_own_nearest(reopened, ids[:20], vectors[:20]) == 20
    finally:
        reopened.close()
    assert "holds 16-dimensional vectors, the catalogue 32" in caplog.text and "rebuilding it" in caplog.text
