"""The DINOv3 embedder: token layout from the config, pooling, determinism, the non-finite guard."""
import math

import pytest
import torch
from torch.nn.functional import normalize

from indexer import api
from indexer.embedder import fit_pca
from indexer.errors import IndexerError, NonFiniteOutput


def backbone_outputs(embedder, pixels):
    with torch.no_grad():
        return embedder.backbone(pixel_values=pixels)


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 3, 224, 320)], ids=["square", "wide"])
def test_patch_grid_is_the_tokens_after_cls_and_four_registers(embedder, shape):
    pixels = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    batch, _, height, width = shape
    out = backbone_outputs(embedder, pixels)
    hidden = out.last_hidden_state  # (B, 1 + 4 + h*w, D)
    assert embedder.backbone.config.num_register_tokens == 4
    assert hidden.shape[1] == 1 + 4 + (height // 16) * (width // 16)

    embedding = embedder.embed(pixels)

    expected_grid = hidden[:, 5:].reshape(batch, height // 16, width // 16, -1)
    assert embedding.patch_tokens.shape == (batch, height // 16, width // 16, 32)
    torch.testing.assert_close(embedding.patch_tokens, expected_grid)
    torch.testing.assert_close(embedding.global_vectors, normalize(out.pooler_output, dim=-1))


def test_wide_input_gives_a_14_by_20_grid(embedder):
    embedding = embedder.embed(torch.zeros(1, 3, 224, 320))
    assert tuple(embedding.patch_tokens.shape[1:3]) == (14, 20)


def test_register_offset_follows_the_config(two_register_model_dir, load_embedder):
    embedder = load_embedder(two_register_model_dir)
    assert embedder.backbone.config.num_register_tokens == 2
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    hidden = backbone_outputs(embedder, pixels).last_hidden_state
    assert hidden.shape[1] == 1 + 2 + 14 * 14

    embedding = embedder.embed(pixels)

    torch.testing.assert_close(embedding.patch_tokens, hidden[:, 3:].reshape(2, 14, 14, -1))
    assert embedder.provenance["num_register_tokens"] == 2


@pytest.mark.parametrize("pooling, factor", [("cls", 1), ("mean", 1), ("cls+mean", 2)])
def test_pooling_dims_and_values(model_dir, load_embedder, pooling, factor):
    embedder = load_embedder(model_dir, pooling=pooling)
    hidden_size = embedder.backbone.config.hidden_size
    pixels = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    hidden = backbone_outputs(embedder, pixels).last_hidden_state
    cls_part = normalize(hidden[:, 0], dim=-1)
    mean_part = normalize(hidden[:, 5:].mean(dim=1), dim=-1)
    expected = {"cls": cls_part, "mean": mean_part,
                "cls+mean": torch.cat([cls_part, mean_part], dim=-1) / math.sqrt(2)}[pooling]

    vectors = embedder.embed(pixels).global_vectors

    assert vectors.shape == (3, factor * hidden_size)
    assert embedder.provenance["dim"] == factor * hidden_size
    assert embedder.provenance["pooling"] == pooling
    torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=1e-5)


def test_unknown_pooling_and_bad_resolution_are_refused(model_dir, load_embedder):
    with pytest.raises(IndexerError, match="pooling"):
        load_embedder(model_dir, pooling="max")
    with pytest.raises(IndexerError, match="multiple of the patch size"):
        load_embedder(model_dir, resolution=200)


def test_same_image_embeds_identically_and_unit_length(embedder, chip_paths):
    first = api.embed_image(chip_paths[0], embedder).global_vectors
    second = api.embed_image(chip_paths[0], embedder).global_vectors
    other = api.embed_image(chip_paths[1], embedder).global_vectors

    assert torch.equal(first, second)
    assert not torch.allclose(first, other)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(1))


def test_path_and_pil_image_embed_the_same(embedder, chip_paths):
    from PIL import Image

    with Image.open(chip_paths[0]) as image:
        from_pil = api.embed_image(image, embedder).global_vectors
    from_path = api.embed_image(chip_paths[0], embedder).global_vectors
    torch.testing.assert_close(from_pil, from_path)


@pytest.mark.parametrize("token", [0, 2, -1], ids=["cls", "register", "patch"])
def test_non_finite_output_is_refused_with_advice(model_dir, load_embedder, monkeypatch, token):
    embedder = load_embedder(model_dir)
    forward = embedder.backbone.forward

    def overflowing(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.last_hidden_state[:, token] = float("nan")
        return out

    monkeypatch.setattr(embedder.backbone, "forward", overflowing)
    pixels = torch.zeros(1, 3, 224, 224)
    if token == 2:  # a register token is neither pooled nor kept: it cannot poison a vector
        assert torch.isfinite(embedder.embed(pixels).global_vectors).all()
        return
    with pytest.raises(NonFiniteOutput, match="--dtype bfloat16"):
        embedder.embed(pixels)


def test_fit_pca_keeps_at_most_64_components():
    tokens = torch.randn(500, 100, generator=torch.Generator().manual_seed(0))
    mean, components, fitted_on = fit_pca(tokens)
    assert mean.shape == (100,)
    assert components.shape == (64, 100)
    assert fitted_on == 500
    gram = components @ components.T  # orthonormal rows
    assert abs(gram - torch.eye(64).numpy()).max() < 1e-4


@pytest.mark.parametrize("name", ["{tmp}/no-such-model", "./no-such-model", "~/no-such-model", "models/dinov3/sat"])
def test_a_model_folder_that_is_not_there_is_named_as_missing(tmp_path, monkeypatch, name):
    """A path (not a Hub id, owner/name) to nothing: said so in one line, rather than transformers' complaint
    that it is not a valid repository id."""
    from indexer.embedder import DinoV3Embedder
    from indexer.errors import ModelUnavailable

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailable, match="no model folder at .*no-such-model|no model folder at models/dinov3"):
        DinoV3Embedder.from_pretrained(name.format(tmp=tmp_path), device="cpu")


def test_a_model_folder_under_home_may_be_given_with_a_tilde(model_dir, tmp_path, monkeypatch):
    from indexer.embedder import DinoV3Embedder

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / model_dir.name).symlink_to(model_dir)
    monkeypatch.setenv("HOME", str(tmp_path))
    embedder = DinoV3Embedder.from_pretrained(f"~/models/{model_dir.name}", device="cpu")
    assert embedder.provenance["model"] == str(tmp_path / "models" / model_dir.name)  # what a store records


# -- one image from a CUDA graph (the capture itself runs only on a GPU: bench/throughput.py times and checks it) --
def test_only_a_checked_call_of_one_image_takes_the_graph_path(model_dir, load_embedder):
    embedder = load_embedder(model_dir)
    assert embedder.one_image is None  # a CPU: no graphs
    calls = []

    def one_image(pixels):
        calls.append(tuple(pixels.shape))
        return embedder.backbone(pixel_values=pixels).last_hidden_state

    embedder.one_image = one_image  # as on a GPU, recorded
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))

    query = embedder.embed(pixels[:1])  # a query: one image, checked
    embedder.embed(pixels[:1], check=False)  # the pipeline's last, short batch
    embedder.embed(pixels)  # a batch

    assert calls == [(1, 3, 224, 224)]
    torch.testing.assert_close(query.global_vectors, embedder.embed(pixels).global_vectors[:1])


def test_a_forward_that_cannot_be_captured_runs_eagerly_with_one_warning(embedder, caplog, monkeypatch):
    from indexer import graphs
    from indexer.graphs import OneImageGraphs

    monkeypatch.setattr(graphs, "_failed", [])  # graphs off for the process after a failure: this test's only

    forwards = []

    def forward(**inputs):
        forwards.append(1)
        return embedder.backbone(**inputs)

    graphs = OneImageGraphs(forward)
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    expected = embedder.backbone(pixel_values=pixels).last_hidden_state

    with caplog.at_level("WARNING", logger="indexer.graphs"):
        first = graphs(pixels)  # no CUDA here: the capture fails at its first step
        second = graphs(pixels)

    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    assert len(forwards) == 2  # one eager forward per call, no second capture attempt
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "could not be captured as a CUDA graph" in caplog.records[0].message and "224x224" in caplog.records[0].message


def test_out_of_memory_while_capturing_is_raised_and_a_later_call_tries_again(embedder, monkeypatch):
    from contextlib import nullcontext

    from indexer import graphs

    class Stream:  # enough of a CUDA stream for the capture to reach its warm-up forwards on a CPU
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    monkeypatch.setattr(graphs, "_failed", [])
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: nullcontext())
    memory = [False]

    def forward(**inputs):
        if not memory[0]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return embedder.backbone(**inputs)

    one_image = graphs.OneImageGraphs(forward)
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))

    with pytest.raises(torch.OutOfMemoryError):
        one_image(pixels)  # as an eager forward would: the caller's own out-of-memory handling applies
    assert graphs._failed == [] and one_image._graphs == {}  # nothing kept: graphs stay on

    memory[0] = True
    result = one_image(pixels)  # tries again; on a CPU the capture itself then fails, and the forward runs eagerly
    torch.testing.assert_close(result, embedder.backbone(pixel_values=pixels).last_hidden_state)
    assert graphs._failed  # that failure, not out of memory, turned graphs off
