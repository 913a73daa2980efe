"""Random-weight DINOv3 models of known shapes, saved like a Hub checkpoint (tests, demos, benchmarks).

Their neighbours mean nothing; they exist so that every code path, the transformers loading path
included, runs where the real weights cannot be downloaded.
"""
from pathlib import Path

SHAPES = {
    # name: (hidden, layers, heads, mlp, gated, layer scale)
    # Small shapes keep layer scale 1 so random CLS tokens still differ between images;
    # the 7B uses 1e-5 (as trained) so 40 random layers stay finite in float16.
    "tiny": (32, 2, 2, 64, False, 1.0),
    "vits16": (384, 12, 6, 1536, False, 1.0),
    "vitl16": (1024, 24, 16, 4096, False, 1.0),
    "vit7b16": (4096, 40, 32, 8192, True, 1e-5),  # the SAT-493M 7B: 6,716M parameters
}


def random_config(shape: str = "tiny", *, num_register_tokens: int = 4):
    from transformers import DINOv3ViTConfig

    hidden, layers, heads, mlp, gated, layerscale = SHAPES[shape]
    return DINOv3ViTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
        use_gated_mlp=gated, hidden_act="silu" if gated else "gelu", num_register_tokens=num_register_tokens,
        patch_size=16, image_size=224, layerscale_value=layerscale,
    )


def save_random_model(model_dir, shape: str = "tiny", *, seed: int = 0, num_register_tokens: int = 4) -> Path:
    """Build a random DINOv3 ViT and save it (safetensors) where from_pretrained can load it."""
    import torch
    from transformers import DINOv3ViTModel

    torch.manual_seed(seed)
    model = DINOv3ViTModel(random_config(shape, num_register_tokens=num_register_tokens)).eval()
    model_dir = Path(model_dir)
    model.save_pretrained(model_dir, safe_serialization=True)
    return model_dir
