"""Random-weight DINOv3 models of known shapes, saved like a Hub checkpoint (tests, demos, benchmarks).

Their neighbours mean nothing; they exist so that every code path, the transformers loading path
included, runs where the real weights cannot be downloaded.
"""
import json
from pathlib import Path

from .errors import IndexerError

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


MARK = "lookalike_random_shape"  # in the config of every model made here: what may be written over
OWN_FILES = {"config.json", "model.safetensors"}


def save_random_model(model_dir, shape: str = "tiny", *, seed: int = 0, num_register_tokens: int = 4) -> Path:
    """Build a random DINOv3 ViT and save it (safetensors) where from_pretrained can load it: into a new or empty
    folder, or over a random model made here; anything else there (a downloaded model) is refused, not lost."""
    import torch
    from transformers import DINOv3ViTModel

    model_dir = Path(model_dir)
    _check_target(model_dir)
    torch.manual_seed(seed)
    config = random_config(shape, num_register_tokens=num_register_tokens)
    setattr(config, MARK, shape)
    DINOv3ViTModel(config).eval().save_pretrained(model_dir, safe_serialization=True)
    return model_dir


def _check_target(model_dir: Path) -> None:
    if not model_dir.is_dir():
        return
    names = sorted(path.name for path in model_dir.iterdir())
    if not names:
        return
    try:
        ours = set(names) <= OWN_FILES and MARK in json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        ours = False
    if not ours:
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise IndexerError(f"{model_dir} already holds files ({listed}): a random model is written only into a new "
                           "or empty folder, or over one made by random-model; choose another folder")
