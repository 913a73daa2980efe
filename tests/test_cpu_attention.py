"""lookalike's CPU attention (padded keys, split products): what the loaded backbone runs, and that it changes
nothing but speed."""
import pytest
import torch
import torch.nn.functional as F

from indexer import attention
from indexer.attention import padded_key_attention, split_attention


def plain(query, key, value):
    return F.scaled_dot_product_attention(query, key, value).transpose(1, 2)  # (B, N, H, d)


@pytest.mark.parametrize("keys", [201, 208, 261, 581])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_keys_give_plain_attention(keys, dtype):
    generator = torch.Generator().manual_seed(keys)
    query, key, value = (torch.randn(2, 3, keys, 16, generator=generator).to(dtype) for _ in range(3))  # (B, H, N, d)

    output, weights = padded_key_attention(None, query, key, value, None, scaling=16 ** -0.5)

    assert weights is None
    assert output.shape == (2, keys, 3, 16)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(output.float(), plain(query, key, value).float(), atol=tolerance, rtol=tolerance)


def spy_on_keys(monkeypatch) -> list[int]:
    seen = []
    real = F.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        seen.append(key.shape[2])
        return real(query, key, value, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    return seen


def assert_equals_sdpa_in_float32(backbone, pixels):
    """The backbone's attention in float32 must give transformers' sdpa output to float32 rounding."""
    backbone.float()
    with torch.inference_mode():
        output = backbone(pixel_values=pixels).last_hidden_state
        backbone.set_attn_implementation("sdpa")
        reference = backbone(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)


@pytest.fixture
def on_amx(monkeypatch):
    """Whatever this CPU is: the switch is what is tested here, the speed is bench/cpu_attention.py's."""
    monkeypatch.setattr(attention, "amx_available", lambda: True)


def test_a_bfloat16_backbone_on_amx_attends_over_keys_padded_to_16(model_dir, load_embedder, on_amx, monkeypatch):
    embedder = load_embedder(model_dir, dtype="bfloat16")  # transformers' from_pretrained, on the CPU
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    seen = spy_on_keys(monkeypatch)

    embedder.embed(pixels)

    backbone = embedder.backbone
    assert backbone.config._attn_implementation == attention.NAME
    assert seen == [208] * backbone.config.num_hidden_layers  # 1 + 4 + 196 tokens, padded
    assert_equals_sdpa_in_float32(backbone, pixels)


def test_long_sequences_are_not_padded(model_dir, load_embedder, on_amx, monkeypatch):
    embedder = load_embedder(model_dir, dtype="bfloat16", resolution=512)
    seen = spy_on_keys(monkeypatch)

    embedder.embed(torch.zeros(1, 3, 512, 512))

    assert set(seen) == {1 + 4 + 32 * 32}  # measured slower padded: left as it is


@pytest.mark.parametrize("batch, score_bytes", [(1, 4 << 20), (5, 4 << 20), (5, 2 * 3 * 201 * 201 * 4)],
                         ids=["one-image", "one-slice", "slices-of-2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_attention_gives_plain_attention(batch, score_bytes, dtype, monkeypatch):
    monkeypatch.setattr(attention, "SCORE_BYTES", score_bytes)  # slices of 2 images and a last one of 1
    generator = torch.Generator().manual_seed(batch)
    query, key, value = (torch.randn(batch, 201, 3, 16, generator=generator).to(dtype).transpose(1, 2)
                         for _ in range(3))  # (B, H, N, d), strided as transformers hands them over

    output, weights = split_attention(None, query, key, value, None, scaling=0.3)

    assert weights is None
    assert output.shape == (batch, 201, 3, 16) and output.is_contiguous()
    expected = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), scale=0.3).transpose(1, 2)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(output.float(), expected, atol=tolerance, rtol=tolerance)


def test_split_attention_hands_a_mask_to_pytorchs_kernel():
    generator = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(2, 3, 201, 16, generator=generator) for _ in range(3))
    mask = torch.zeros(1, 201)
    mask[:, 100:] = float("-inf")  # only the first 100 keys count

    output, _ = split_attention(None, query, key, value, mask)

    expected = plain(query, key[:, :, :100], value[:, :, :100])
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_split_attention_keeps_gradients():
    generator = torch.Generator().manual_seed(2)
    query, key, value = (torch.randn(2, 3, 201, 16, generator=generator, requires_grad=True) for _ in range(3))

    output, _ = split_attention(None, query, key, value, None)
    output.sum().backward()

    assert query.grad is not None and query.grad.abs().sum() > 0
    torch.testing.assert_close(output, plain(query, key, value), atol=1e-5, rtol=1e-5)


@pytest.fixture
def on_avx512_bf16(monkeypatch):
    """A CPU with AVX512-BF16 and no AMX (an AMD EPYC), whatever this one is."""
    monkeypatch.setattr(attention, "amx_available", lambda: False)
    monkeypatch.setattr(attention, "avx512_bf16_available", lambda: True)


def test_a_bfloat16_backbone_without_amx_runs_split_attention(model_dir, load_embedder, on_avx512_bf16, monkeypatch):
    embedder = load_embedder(model_dir, dtype="bfloat16")
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    seen = spy_on_keys(monkeypatch)

    embedder.embed(pixels)

    backbone = embedder.backbone
    assert backbone.config._attn_implementation == attention.SPLIT_NAME
    assert seen == []  # PyTorch's SDPA kernel never called
    assert_equals_sdpa_in_float32(backbone, pixels)


@pytest.mark.parametrize("dtype, amx, avx512_bf16", [("float32", True, True), ("bfloat16", False, False)],
                         ids=["float32", "neither"])
def test_float32_and_cpus_without_bfloat16_keep_transformers_sdpa(model_dir, load_embedder, monkeypatch, dtype, amx,
                                                                  avx512_bf16):
    monkeypatch.setattr(attention, "amx_available", lambda: amx)
    monkeypatch.setattr(attention, "avx512_bf16_available", lambda: avx512_bf16)

    embedder = load_embedder(model_dir, dtype=dtype)

    assert embedder.backbone.config._attn_implementation == "sdpa"


def test_split_attention_leaves_compiled_graphs_to_pytorchs_kernel(monkeypatch):
    seen = spy_on_keys(monkeypatch)
    monkeypatch.setattr(attention.torch.compiler, "is_compiling", lambda: True)  # as inside torch.compile's trace
    query, key, value = (torch.randn(1, 2, 201, 16, generator=torch.Generator().manual_seed(3)) for _ in range(3))

    output, _ = split_attention(None, query, key, value, None)

    assert seen == [201]  # SDPA, unpadded: what --compile was measured with
    torch.testing.assert_close(output, plain(query, key, value), atol=1e-5, rtol=1e-5)
