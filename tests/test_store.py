"""The store on its own: index file repair, PCA patch features, the non-finite guard, typed errors."""
import faiss
import numpy as np
import pytest
import torch

from helpers import ids_by_path
from indexer import api
from indexer.errors import NonFiniteOutput
from store import Store, StoreError, StoreNotFound, UnknownImage


@pytest.mark.parametrize("damage", ["deleted", "truncated", "empty", "garbage"])
def test_damaged_index_file_is_rebuilt_from_vectors(indexed, store_dir, open_store, damage, caplog):
    index_path = store_dir / "index.faiss"
    data = index_path.read_bytes()
    if damage == "deleted":
        index_path.unlink()
    else:
        index_path.write_bytes({"truncated": data[:100], "empty": b"", "garbage": b"x" * 4096}[damage])

    store = open_store(store_dir)

    assert store.index.ntotal == 12
    assert "rebuilding" in caplog.text
    for image_id in ids_by_path(store).values():
        first = api.search(store, image_id, k=1)["results"][0]
        assert first["id"] == image_id
        assert first["score"] >= 0.999


def test_index_out_of_step_with_the_catalogue_is_rebuilt(index, indexed, chips_dir, chip_paths, store_dir,
                                                         open_store):
    stale = (store_dir / "index.faiss").read_bytes()  # holds 12 ids
    chip_paths[0].unlink()
    index([chips_dir], store_dir)
    (store_dir / "index.faiss").write_bytes(stale)

    store = open_store(store_dir)

    assert store.index.ntotal == 11
    assert len(api.search(store, min(ids_by_path(store).values()), k=20)["results"]) == 11


def test_next_run_rewrites_a_good_index_file(index, indexed, chips_dir, store_dir):
    (store_dir / "index.faiss").write_bytes(b"")
    index([chips_dir], store_dir)
    assert faiss.read_index(str(store_dir / "index.faiss")).ntotal == 12


def test_patch_features_and_pca(indexed, store_dir, chip_paths, embedder, open_store):
    store = open_store(store_dir)
    image_id = ids_by_path(store)[str(chip_paths[0])]

    features = store.patch_features(image_id)
    pca = store.pca()

    assert features.shape == (14, 14, min(64, 32))
    assert pca is not None
    assert pca.components.shape == (32, 32)
    assert pca.mean.shape == (32,)
    assert pca.fitted_on == 12 * 14 * 14  # every token of the first (only) batch
    tokens = api.embed_image(chip_paths[0], embedder).patch_tokens[0].numpy()  # (14, 14, 32)
    expected = pca.project(tokens)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(features, expected, atol=2e-3 * scale)  # float16 storage
    assert store.info()["patch_features"] == {"dim": 32, "fitted_on_tokens": 12 * 14 * 14}


def test_pca_is_kept_across_runs(index, chip_paths, tmp_path, open_store):
    store_dir = tmp_path / "store"
    index(chip_paths[:4], store_dir)
    store = open_store(store_dir)
    before = store.pca()
    store.close()

    index(chip_paths, store_dir)

    after = open_store(store_dir).pca()
    np.testing.assert_array_equal(after.components, before.components)
    assert after.fitted_on == before.fitted_on == 4 * 14 * 14


def test_non_finite_batch_writes_nothing(index, chips_dir, store_dir, model_dir, load_embedder, monkeypatch,
                                         open_store):
    broken = load_embedder(model_dir)
    forward = broken.backbone.forward

    def overflowing(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.last_hidden_state[0, 10] = float("inf")
        out.last_hidden_state[1, 0] = float("nan")
        return out

    monkeypatch.setattr(broken.backbone, "forward", overflowing)

    with pytest.raises(NonFiniteOutput, match="--dtype bfloat16"):
        index([chips_dir], store_dir, embedder=broken)

    store = open_store(store_dir)
    assert store.count_images() == 0
    assert store.db.execute("SELECT count(*) FROM vectors").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM patches").fetchone()[0] == 0
    assert store.index.ntotal == 0
    assert store.pca() is None
    assert store.info()["last_run"]["status"] == "failed"


def test_non_finite_output_does_not_reach_the_embedding(model_dir, load_embedder, monkeypatch):
    broken = load_embedder(model_dir)
    forward = broken.backbone.forward

    def overflowing(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.last_hidden_state[:, 20] = float("nan")
        return out

    monkeypatch.setattr(broken.backbone, "forward", overflowing)
    with pytest.raises(NonFiniteOutput) as refused:
        broken.embed(torch.zeros(2, 3, 224, 224))
    assert "float32" in str(refused.value)


def test_open_missing_store(tmp_path):
    with pytest.raises(StoreNotFound, match="lookalike index"):
        Store.open(tmp_path / "nothing-here")
    assert not (tmp_path / "nothing-here").exists()


def test_store_path_that_is_a_file(tmp_path, embedder):
    path = tmp_path / "a-file"
    path.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        Store.create(path, provenance=embedder.provenance)


def test_unknown_id(indexed, store_dir, open_store):
    store = open_store(store_dir)
    with pytest.raises(UnknownImage):
        api.search(store, 10_000, k=3)


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "10"])
def test_a_k_that_is_not_a_positive_whole_number_is_refused(indexed, store_dir, open_store, k):
    # faiss's re-ranked inverted-file search never returns for k < 1: nothing may reach it
    store = open_store(store_dir)
    with pytest.raises(StoreError, match="k must be a whole number of at least 1"):
        api.search(store, 1, k=k)


def test_empty_store_searches_to_nothing(tmp_path, embedder):
    store = Store.create(tmp_path / "store", provenance=embedder.provenance)
    try:
        assert store.search(np.ones(32, dtype=np.float32) / np.sqrt(32), k=5) == []
    finally:
        store.close()


def test_a_reader_gathering_large_vectors_writes_nothing_into_the_store(tmp_path, monkeypatch):
    """Past IN_MEMORY_BYTES the vectors of an index rebuilt in memory go to a scratch file: a reader's (a search
    of a store whose index file is missing, or of a read-only one) goes to the system's temporary folder."""
    import numpy as np

    from store import Store, indexing

    store_dir = tmp_path / "store"
    writer = Store.create(store_dir, provenance={"model": "m", "dim": 8, "normalization": "n", "resolution": 224,
                                                 "pooling": "cls"})
    vectors = np.eye(8, dtype=np.float32)
    writer.add_embeddings([{"path": f"{i}.jpg", "size": 1, "mtime": 0.0, "sha256": str(i), "width": 8,
                            "height": 8} for i in range(8)], vectors, np.zeros((8, 1, 1, 4), dtype=np.float32))
    writer.finish_index()
    writer.close()
    (store_dir / "index.faiss").unlink()
    monkeypatch.setattr(indexing, "IN_MEMORY_BYTES", 16)
    made = []
    real = indexing.tempfile.NamedTemporaryFile
    monkeypatch.setattr(indexing.tempfile, "NamedTemporaryFile", lambda **kw: made.append(kw.get("dir")) or real(**kw))
    reader = Store.open(store_dir)
    assert reader.search(vectors[3], k=1)[0]["score"] > 0.999
    assert made == [None]


def test_a_store_held_open_fills_k_past_images_removed_since_it_loaded_its_index(tmp_path):
    """A notebook (or the page) holding a store while an index run removes the nearest images: their ids come
    back from the loaded index; the search asks for more in their place."""
    import numpy as np

    from store import Store

    provenance = {"model": "m", "dim": 8, "normalization": "n", "resolution": 224, "pooling": "cls"}
    rng = np.random.default_rng(0)
    query = np.ones(8, dtype=np.float32) / np.sqrt(8)
    near = query + 0.05 * rng.standard_normal((20, 8)).astype(np.float32)  # crowd the top of every list
    far = rng.standard_normal((20, 8)).astype(np.float32)
    vectors = np.concatenate([near, far])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    writer = Store.create(tmp_path / "s", provenance=provenance)
    ids = writer.add_embeddings([{"path": f"{i}.jpg", "size": 1, "mtime": 0.0, "sha256": str(i), "width": 8,
                                  "height": 8} for i in range(40)], vectors, np.zeros((40, 1, 1, 4), np.float32))
    writer.finish_index()
    writer.close()
    reader = Store.open(tmp_path / "s")
    assert len(reader.search(query, k=10)) == 10  # its index loaded now
    writer = Store.create(tmp_path / "s", provenance=provenance)
    writer.remove_images(ids[:20])
    writer.finish_index()
    writer.close()
    found = reader.search(query, k=10)
    assert len(found) == 10 and not {hit["id"] for hit in found} & set(ids[:20])
