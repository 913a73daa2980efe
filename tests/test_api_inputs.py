"""The Python API's answers to what is no query, no store or no count: one line each, never a traceback."""
import numpy as np
import pytest
from PIL import Image

from indexer import api
from indexer.errors import IndexerError
from store import StoreError


@pytest.fixture
def store(ui_store_dir):
    opened = api.open_store(ui_store_dir)
    yield opened
    opened.close()


def test_a_path_or_a_closed_store_where_an_open_store_is_wanted(ui_store_dir, ui_ids):
    image_id = next(iter(ui_ids.values()))
    for call in (lambda s: api.search(s, image_id), lambda s: api.search_each(s, [image_id]),
                 lambda s: api.near_duplicates(s)):
        with pytest.raises(IndexerError, match=r"is no open store: open it first, api.open_store\(path\)"):
            call(str(ui_store_dir))
        closed = api.open_store(ui_store_dir)
        closed.close()
        with pytest.raises(StoreError, match="was closed: open it again"):
            call(closed)


def test_what_is_no_query_is_refused_in_one_line(store, ui_ids, embedder):
    with pytest.raises(IndexerError, match="True is not a query"):
        api.search(store, True, embedder=embedder)
    with pytest.raises(IndexerError, match="is not a query"):
        api.search(store, [next(iter(ui_ids.values())), {"id": 1}], embedder=embedder)
    answer = list(api.search_each(store, [None, next(iter(ui_ids.values()))], embedder=embedder))
    assert "is not a query" in answer[0]["error"] and "results" in answer[1]  # the others go on
    with pytest.raises(IndexerError, match="0×0 px: nothing to search by"):
        api.search(store, Image.new("RGB", (0, 0)), embedder=embedder)
    with pytest.raises(IndexerError, match=r"takes a list of queries: give \[query\]"):
        api.search_each(store, "chips", embedder=embedder)
    with pytest.raises(IndexerError, match="batch_size must be a whole number of at least 1, not 0"):
        api.search_each(store, [next(iter(ui_ids.values()))], batch_size=0, embedder=embedder)
    with pytest.raises(StoreError, match="k must be a whole number of at least 1, not 2.5"):
        api.near_duplicates(store, k=2.5)


def test_a_files_bytes_as_a_query_are_described_not_spelt_out(store, ui_ids, embedder):
    path = next(iter(ui_ids))
    data = open(path, "rb").read()
    answer = api.search(store, data, k=2, embedder=embedder)
    assert answer["query"] == {"path": "<bytes>"} and answer["results"][0]["id"] == ui_ids[path]
    assert next(api.search_each(store, [data], k=2, embedder=embedder))["query"] == {"path": "<bytes>"}


def test_a_files_bytes_in_a_memoryview_or_bytearray_search_as_its_bytes_do(store, ui_ids, embedder):
    path = next(iter(ui_ids))
    data = open(path, "rb").read()
    expected = api.search(store, data, k=3, embedder=embedder)["results"]
    for wrapped in (memoryview(data), bytearray(data)):
        answer = api.search(store, wrapped, k=3, embedder=embedder)
        assert answer["query"] == {"path": "<bytes>"} and answer["results"] == expected
        assert next(api.search_each(store, [wrapped], k=3, embedder=embedder))["results"] == expected


def test_the_other_calls_that_want_an_open_store_refuse_a_path_or_a_closed_one(ui_store_dir, ui_ids):
    with pytest.raises(IndexerError, match="is no open store"):
        api.load_embedder(str(ui_store_dir))
    closed = api.open_store(ui_store_dir)
    closed.close()
    closed.close()  # twice is once
    for call in (api.scene_read_options, lambda s: s.patch_features(next(iter(ui_ids.values()))), api.load_embedder):
        with pytest.raises(StoreError, match="was closed: open it again"):
            call(closed)


def test_search_each_refuses_one_id_and_a_bad_k_at_the_call(store, ui_ids, embedder):
    image_id = next(iter(ui_ids.values()))
    with pytest.raises(IndexerError, match=r"takes a list of queries: give \[query\]"):
        api.search_each(store, image_id, embedder=embedder)
    for k in (0, "3"):
        with pytest.raises(StoreError, match="k must be a whole number of at least 1"):
            api.search_each(store, [image_id], k=k, embedder=embedder)  # no next(): refused at the call


def test_a_numpy_integer_k_searches_as_an_int_does(store, ui_ids):
    image_id = next(iter(ui_ids.values()))
    expected = api.search(store, image_id, k=3)["results"]
    assert api.search(store, image_id, k=np.int64(3))["results"] == expected
    assert next(api.search_each(store, [image_id], k=np.int64(3)))["results"] == expected
    assert api.near_duplicates(store, k=np.int64(5))["k"] == 5


def test_a_part_in_search_each_answers_as_search_does_and_a_bad_one_only_fails_itself(store, ui_ids, embedder):
    image_id = next(iter(ui_ids.values()))
    part = api.Part(image_id, (0, 0, 64, 64))
    expected = api.search(store, part, k=3, embedder=embedder, exclude_self=True)
    answers = list(api.search_each(store, [part, api.Part(10**9, (0, 0, 8, 8)), image_id], k=3, embedder=embedder,
                                   exclude_self=True))
    assert answers[0] == expected
    assert image_id not in [hit["id"] for hit in answers[0]["results"]]
    assert "error" in answers[1] and str(10**9) in answers[1]["error"]
    assert answers[1]["query"] == {"id": 10**9, "crop": [0, 0, 8, 8]}  # described as a Part that reads is
    assert "results" in answers[2]  # the others go on


def test_an_array_an_empty_picture_or_a_missing_file_is_refused_in_one_line(store, embedder, tmp_path):
    with pytest.raises(IndexerError) as refused:
        api.search(store, np.zeros((4, 4, 3), np.uint8), embedder=embedder)
    assert len(str(refused.value).splitlines()) == 1 and str(refused.value).startswith("ndarray")
    with pytest.raises(IndexerError, match="0×0 px: nothing to search by"):
        api.embed_image(Image.new("RGB", (0, 0)), embedder)
    with pytest.raises(IndexerError, match=r"cannot be read \(No such file or directory\)"):
        api.query_file_size(str(tmp_path / "nofile.jpg"))


def test_a_bad_k_is_refused_before_the_model_loads_and_a_non_query_is_described_in_one_line(store, embedder, ui_ids):
    made = []

    def make_embedder():
        made.append(1)
        return embedder

    with pytest.raises(StoreError, match="k must be a whole number of at least 1, not 0"):
        api.search(store, next(iter(ui_ids)), k=0, make_embedder=make_embedder)
    assert made == []  # a minutes-long load for the 7B, before the refusal, until today
    answer = next(api.search_each(store, [np.zeros((4, 4, 3), np.uint8)], embedder=embedder))
    assert "error" in answer and "\n" not in answer["query"]["path"] and answer["query"]["path"].startswith("ndarray")


def test_an_open_store_sent_to_another_process_is_refused_in_one_line(store):
    import copy
    import pickle

    for send in (pickle.dumps, copy.copy, copy.deepcopy):  # what spawn and a pool's arguments go through
        with pytest.raises(StoreError, match=r"cannot be sent to another process or copied: open .* there"):
            send(store)


def _search_in_child(store, image_id, answers):
    answers.put([hit["id"] for hit in api.search(store, image_id, k=3)["results"]])


def test_a_forked_child_searches_a_store_its_parent_searched(store, ui_ids):
    """faiss's OpenMP threads stay in the parent: a child made by fork() after its parent had searched hung for good
    in its first search, until faiss was held to one thread in such a child."""
    import multiprocessing

    image_id = next(iter(ui_ids.values()))
    expected = [hit["id"] for hit in api.search(store, image_id, k=3)["results"]]  # the parent's threads started
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(target=_search_in_child, args=(store, image_id, answers))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child's search hung")
    assert child.exitcode == 0
    assert answers.get(timeout=5) == expected
