"""The embedding loop's background writer and memory back-off: what reaches the store, and in what order."""
import pytest
import torch

from helpers import copy_chips
from indexer.errors import NonFiniteOutput


def test_a_non_finite_later_batch_is_refused_and_earlier_ones_kept(index, tmp_path, model_dir, load_embedder,
                                                                    monkeypatch, open_store):
    first = copy_chips(tmp_path / "first", 6)
    index([first], tmp_path / "store", batch_size=2)
    broken = load_embedder(model_dir)
    forward = broken.backbone.forward
    calls = []

    def overflow_on_second_batch(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            out.last_hidden_state[0, 0] = float("nan")
        return out

    monkeypatch.setattr(broken.backbone, "forward", overflow_on_second_batch)
    with pytest.raises(NonFiniteOutput, match="--dtype bfloat16"):
        index([first, copy_chips(tmp_path / "second", 6, offset=1)], tmp_path / "store", embedder=broken,
              batch_size=2)

    store = open_store(tmp_path / "store")
    # the 6 of the first run, the first new batch of 2; the refused batch and everything after it: nothing
    assert store.count_images() == 8
    assert store.db.execute("SELECT count(*) FROM vectors").fetchone()[0] == 8
    assert store.index.ntotal == 8


class ShrinkingMemory:
    """Wraps an embedder: any batch larger than `limit` runs 'out of device memory'."""

    def __init__(self, inner, limit):
        self.inner, self.limit, self.sizes = inner, limit, []
        self.preprocess, self.provenance = inner.preprocess, inner.provenance

    def embed(self, pixels, *, check=True):
        self.sizes.append(len(pixels))
        if len(pixels) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner.embed(pixels, check=check)


def test_out_of_memory_halves_the_batch_and_loses_nothing(index, chips_dir, store_dir, embedder, open_store):
    shrinking = ShrinkingMemory(embedder, limit=3)
    summary = index([chips_dir], store_dir, embedder=shrinking, batch_size=8)

    assert summary["indexed"] == 12
    assert open_store(store_dir).index.ntotal == 12
    assert shrinking.sizes[:3] == [8, 4, 2]  # backs off once, then stays small
    assert max(shrinking.sizes[3:]) <= 2


def test_an_embedder_without_the_check_keyword_still_works(index, chips_dir, store_dir, embedder, open_store):
    class Plain:
        preprocess, provenance = embedder.preprocess, embedder.provenance

        def embed(self, pixels):
            return embedder.embed(pixels)

    assert index([chips_dir], store_dir, embedder=Plain())["indexed"] == 12


def test_compiled_backbone_gives_the_same_vectors_and_pads_the_last_batch(model_dir, load_embedder, index,
                                                                            chips_dir, tmp_path, open_store):
    eager = load_embedder(model_dir)
    compiled = load_embedder(model_dir, compile=True)
    index([chips_dir], tmp_path / "eager", embedder=eager, batch_size=5)  # 12 chips: 5, 5 and a short 2
    index([chips_dir], tmp_path / "compiled", embedder=compiled, batch_size=5)

    assert compiled.compiled and compiled._static_batch == 5
    a, b = open_store(tmp_path / "eager"), open_store(tmp_path / "compiled")
    for path, row in a.images_by_path().items():
        other = b.images_by_path()[path]
        assert abs(float(a.vector(row["id"]) @ b.vector(other["id"])) - 1.0) < 1e-4


def test_the_patch_pca_is_written_on_the_writers_thread(index, chips_dir, store_dir, monkeypatch):
    """The loop's store calls all happen on the writer's thread: the first batch's failures are written there while
    the main thread fits the PCA, and two threads' transactions on one SQLite connection interleave."""
    import threading

    from store import Store

    threads = []
    real = Store.set_pca
    monkeypatch.setattr(Store, "set_pca", lambda self, pca: threads.append(threading.current_thread().name)
                        or real(self, pca))
    index([chips_dir], store_dir)
    assert threads == ["lookalike-store-writer"]
