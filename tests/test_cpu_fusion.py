"""The backbone's layers rewritten for a CPU: when they are, and that they compute what transformers does."""
import copy

import pytest
import torch
import torch.nn.functional as F

from indexer import attention, cpu_fusion
from indexer.cpu_fusion import FusedLinear, fuse_for_cpu


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_fused_linear_is_the_linear_then_the_exact_activation(activation):
    generator = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(24, 40)
    x = torch.randn(3, 7, 24, generator=generator) * 3  # (B, N, D): wide enough to tell GELU from its tanh form
    fused = FusedLinear(linear, activation)

    with torch.inference_mode():
        output = fused(x)
        expected = {"gelu": F.gelu, "silu": F.silu}[activation](linear(x))
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
        if activation == "gelu":  # transformers' "gelu" is the exact (erf) one
            assert (output - F.gelu(linear(x), approximate="tanh")).abs().max() > 1e-4

    x.requires_grad_(True)  # oneDNN's fused op has no backward: with autograd on, the eager pair runs
    fused(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_weights_give_the_same_product_for_any_row_count(dtype, bias):
    generator = torch.Generator().manual_seed(6)
    linear = torch.nn.Linear(32, 48, bias=bias).to(dtype)
    fused = FusedLinear(linear)
    fused.pack(6432)  # packed for batches of 32 images; queries are one image, a run's last batch any size

    assert fused.weight.is_mkldnn and not fused.weight.requires_grad
    with torch.inference_mode():
        for shape in [(1, 5, 32), (3, 201, 32), (7, 32), (0, 32)]:
            x = torch.randn(shape, generator=generator).to(dtype)
            torch.testing.assert_close(fused(x), linear(x), atol=1e-5, rtol=1e-5)
    copied = copy.deepcopy(fused)
    fused.unpack()
    assert not fused.weight.is_mkldnn and torch.equal(fused.weight, linear.weight)
    assert copied.weight.is_mkldnn and torch.equal(copied.weight.to_dense(), linear.weight)


def test_packed_weights_survive_casts_and_moves():
    linear = torch.nn.Linear(32, 48).to(torch.bfloat16)
    fused = FusedLinear(linear)
    fused.pack(64)
    x = torch.randn(5, 32)

    fused.float()  # unpacked, cast, packed again
    assert fused.weight.is_mkldnn and fused.weight.dtype == torch.float32
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), linear.float()(x), atol=1e-5, rtol=1e-5)
    fused.to("meta")  # off the CPU: PyTorch's layout, and the plain product
    assert not fused.weight.is_mkldnn and fused.weight.device.type == "meta"
    assert fused(x.to("meta")).shape == (5, 48)


@pytest.fixture
def backbone(model_dir, load_embedder, monkeypatch):
    """The tiny float32 backbone with transformers' layers, and layer scales that are not all 1 (the 7B's are
    learnt)."""
    with monkeypatch.context() as patch:
        patch.setattr("indexer.embedder.fuse_for_cpu", lambda model: model)
        backbone = load_embedder(model_dir).backbone
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in backbone.model.layer:
            for scale in (layer.layer_scale1, layer.layer_scale2):
                scale.lambda1.copy_(torch.rand(scale.lambda1.shape, generator=generator) + 0.5)
    return backbone


def test_the_rewritten_layers_compute_what_transformers_does(backbone):
    fused = fuse_for_cpu(copy.deepcopy(backbone), anywhere=True)  # in float32, to compare to its rounding
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))

    assert fused.lookalike_fused == ("layer_scale", "activation", "packed_weights", "rotary")
    layer = fused.model.layer[0]
    assert isinstance(layer.layer_scale1, torch.nn.Identity) and isinstance(layer.mlp.up_proj, FusedLinear)
    assert all(isinstance(linear, FusedLinear) and linear.weight.is_mkldnn
               for linear in (layer.attention.q_proj, layer.attention.o_proj, layer.mlp.up_proj, layer.mlp.down_proj))
    with torch.inference_mode():
        output = fused(pixel_values=pixels).last_hidden_state
        expected = backbone(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def _rotary_inputs(dtype, *, prefix=5, patches=12, tiled=True):
    """q and k (B, H, N, d) as the attention leaves them (views of a (B, N, H·d) projection), cos and sin (P, d)."""
    generator = torch.Generator().manual_seed(5)
    q, k = (torch.randn(2, prefix + patches, 3 * 16, generator=generator).view(2, prefix + patches, 3, 16)
            .transpose(1, 2).to(dtype) for _ in range(2))
    angles = torch.rand(patches, 8 if tiled else 16, generator=generator) * 6
    angles = angles.tile(2) if tiled else angles
    return q, k, angles.cos().to(dtype), angles.sin().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_is_transformers_rotary_embedding_and_leaves_the_prefix_tokens(dtype):
    from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb

    q, k, cos, sin = _rotary_inputs(dtype)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    rotated_q, rotated_k = cpu_fusion.rotate(q, cos, sin), cpu_fusion.rotate(k, cos, sin)

    assert rotated_q.is_contiguous() and rotated_q.shape == q.shape
    assert torch.equal(rotated_q[:, :, :5], q[:, :, :5])  # CLS and registers are not rotated
    tolerance = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 0.02, "rtol": 0.01}  # one bf16 ulp
    torch.testing.assert_close(rotated_q, expected_q, **tolerance)
    torch.testing.assert_close(rotated_k, expected_k, **tolerance)
    assert not torch.equal(rotated_q[:, :, 5:], q[:, :, 5:])


def test_the_rotary_attention_is_transformers_own_where_rotate_does_not_apply(backbone, monkeypatch):
    calls = []
    rotate = cpu_fusion.rotate
    monkeypatch.setattr(cpu_fusion, "rotate", lambda *args: calls.append(args) or rotate(*args))
    attention_layer = backbone.model.layer[0].attention
    rewritten = copy.deepcopy(attention_layer)
    rewritten.__class__ = cpu_fusion.RotaryAttention
    hidden = torch.randn(2, 5 + 12, backbone.config.hidden_size, generator=torch.Generator().manual_seed(6))
    width = backbone.config.hidden_size // backbone.config.num_attention_heads
    angles = torch.rand(12, width, generator=torch.Generator().manual_seed(7))  # not tiled: halves differ

    with torch.inference_mode():
        untiled, _ = rewritten(hidden, position_embeddings=(angles.cos(), angles.sin()))
        assert not calls
        expected_untiled, _ = attention_layer(hidden, position_embeddings=(angles.cos(), angles.sin()))
        tiled = angles[:, :width // 2].tile(2)
        fast, _ = rewritten(hidden, position_embeddings=(tiled.cos(), tiled.sin()))
        assert len(calls) == 2  # q and k
        expected_fast, _ = attention_layer(hidden, position_embeddings=(tiled.cos(), tiled.sin()))
    with torch.no_grad(), torch.enable_grad():  # autograd on: transformers' forward, exactly
        with_grad, _ = rewritten(hidden, position_embeddings=(tiled.cos(), tiled.sin()))
    assert len(calls) == 2

    assert torch.equal(untiled, expected_untiled)
    assert torch.equal(with_grad.detach(), expected_fast)
    torch.testing.assert_close(fast, expected_fast, atol=1e-6, rtol=1e-5)


def test_parts_can_be_left_out_and_unknown_parts_are_refused(backbone):
    fused = fuse_for_cpu(copy.deepcopy(backbone), parts=("layer_scale",), anywhere=True)

    assert fused.lookalike_fused == ("layer_scale",)
    assert isinstance(fused.model.layer[0].mlp.up_proj, torch.nn.Linear)
    assert isinstance(fused.model.layer[0].layer_scale2, torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown fusion parts"):
        fuse_for_cpu(copy.deepcopy(backbone), parts=("rope",))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_16_bit_backbone_loaded_on_amx_is_rewritten_and_embeds_as_before(model_dir, load_embedder, monkeypatch,
                                                                         dtype):
    monkeypatch.setattr(attention, "amx_available", lambda: True)
    if dtype == "float16" and not cpu_fusion.onednn_float16_available():
        pytest.skip("this CPU's oneDNN has no float16 inner product, so the fused op cannot run here")
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))

    embedder = load_embedder(model_dir, dtype=dtype)  # transformers' from_pretrained, then the rewrite
    monkeypatch.setattr("indexer.embedder.fuse_for_cpu", lambda model: model)
    plain = load_embedder(model_dir, dtype=dtype)

    # oneDNN packs float16 weights only on CPUs with float16 arithmetic: the packing is bfloat16's
    packed = ("packed_weights",) if dtype == "bfloat16" else ()
    assert embedder.backbone.lookalike_fused == ("layer_scale", "activation", *packed, "rotary")
    assert not hasattr(plain.backbone, "lookalike_fused")
    fused_vectors, plain_vectors = embedder.embed(pixels).global_vectors, plain.embed(pixels).global_vectors
    assert F.cosine_similarity(fused_vectors, plain_vectors).min() > 0.999  # 16-bit rounding, not a change


@pytest.mark.parametrize("dtype, amx, avx512_bf16", [("bfloat16", False, True), ("bfloat16", True, False)],
                         ids=["avx512-bf16", "amx"])
def test_a_bfloat16_backbone_on_a_cpu_with_native_bfloat16_is_rewritten(model_dir, load_embedder, monkeypatch, dtype,
                                                                         amx, avx512_bf16):
    monkeypatch.setattr(attention, "amx_available", lambda: amx)
    monkeypatch.setattr(attention, "avx512_bf16_available", lambda: avx512_bf16)

    backbone = load_embedder(model_dir, dtype=dtype).backbone

    assert backbone.lookalike_fused == ("layer_scale", "activation", "packed_weights", "rotary")
    assert backbone.config._attn_implementation == (attention.NAME if amx else attention.SPLIT_NAME)


@pytest.mark.parametrize("dtype, amx, avx512_bf16, float16, avx2", [
    ("float32", True, True, True, False), ("bfloat16", False, False, True, True), ("float16", False, True, True, True),
    ("float16", True, True, False, True)],
    ids=["float32-without-avx2", "no-native-bfloat16", "float16-without-amx", "no-onednn-float16"])
def test_cpus_without_measured_rewrites_keep_transformers_layers(model_dir, load_embedder, monkeypatch, dtype, amx,
                                                                 avx512_bf16, float16, avx2):
    monkeypatch.setattr(attention, "amx_available", lambda: amx)
    monkeypatch.setattr(attention, "avx512_bf16_available", lambda: avx512_bf16)
    monkeypatch.setattr(cpu_fusion, "onednn_float16_available", lambda: float16)
    monkeypatch.setattr(cpu_fusion, "avx2_or_better", lambda: avx2)

    backbone = load_embedder(model_dir, dtype=dtype).backbone

    assert not hasattr(backbone, "lookalike_fused")
    assert not isinstance(backbone.model.layer[0].layer_scale1, torch.nn.Identity)


def test_a_float32_backbone_on_an_avx2_cpu_is_rewritten_and_embeds_as_transformers_does(model_dir, load_embedder,
                                                                                        monkeypatch):
    monkeypatch.setattr(attention, "amx_available", lambda: False)
    monkeypatch.setattr(attention, "avx512_bf16_available", lambda: False)
    monkeypatch.setattr(cpu_fusion, "avx2_or_better", lambda: True)
    pixels = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(7))

    embedder = load_embedder(model_dir, dtype="float32")
    monkeypatch.setattr("indexer.embedder.fuse_for_cpu", lambda model: model)
    plain = load_embedder(model_dir, dtype="float32")

    assert embedder.backbone.lookalike_fused == ("layer_scale", "activation", "packed_weights", "rotary")
    assert embedder.backbone.config._attn_implementation == "sdpa"
    torch.testing.assert_close(embedder.embed(pixels).global_vectors, plain.embed(pixels).global_vectors,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("amx", [True, False], ids=["amx-padded-keys", "avx512-bf16-split-attention"])
def test_a_rewritten_backbone_still_compiles(model_dir, load_embedder, monkeypatch, amx):
    monkeypatch.setattr(attention, "amx_available", lambda: amx)
    monkeypatch.setattr(attention, "avx512_bf16_available", lambda: True)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    eager = load_embedder(model_dir, dtype="bfloat16")

    compiled = load_embedder(model_dir, dtype="bfloat16", compile=True)  # inductor fuses the eager pair itself

    assert compiled.backbone.config._attn_implementation == (attention.NAME if amx else attention.SPLIT_NAME)
    assert compiled.backbone.lookalike_fused == ("layer_scale", "activation", "rotary")  # weights unpacked for inductor
    assert not any(parameter.is_mkldnn for parameter in compiled.backbone.parameters())
    assert eager.backbone.lookalike_fused == ("layer_scale", "activation", "packed_weights", "rotary")
    vectors = compiled.embed(pixels).global_vectors
    assert F.cosine_similarity(vectors, eager.embed(pixels).global_vectors).min() > 0.999
