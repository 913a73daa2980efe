"""Padded-key attention on a CPU: what the loaded backbone runs, and that it changes nothing but speed."""
import pytest
import torch
import torch.nn.functional as F

from indexer import attention
from indexer.attention import padded_key_attention


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
    backbone.float()  # the same attention in float32: padded must equal plain to float32 rounding
    with torch.inference_mode():
        padded = backbone(pixel_values=pixels).last_hidden_state
        backbone.set_attn_implementation("sdpa")
        reference = backbone(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-5)


def test_long_sequences_are_not_padded(model_dir, load_embedder, on_amx, monkeypatch):
    embedder = load_embedder(model_dir, dtype="bfloat16", resolution=512)
    seen = spy_on_keys(monkeypatch)

    embedder.embed(torch.zeros(1, 3, 512, 512))

    assert set(seen) == {1 + 4 + 32 * 32}  # measured slower padded: left as it is


@pytest.mark.parametrize("dtype, amx", [("float32", True), ("bfloat16", False)], ids=["float32", "no-amx"])
def test_float32_and_cpus_without_amx_keep_transformers_sdpa(model_dir, load_embedder, monkeypatch, dtype, amx):
    monkeypatch.setattr(attention, "amx_available", lambda: amx)

    embedder = load_embedder(model_dir, dtype=dtype)

    assert embedder.backbone.config._attn_implementation == "sdpa"
