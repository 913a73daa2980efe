"""Pixel normalisation constants per DINOv3 pretraining corpus, and how one is chosen."""
import logging
import math
from pathlib import PurePath

from .errors import IndexerError

log = logging.getLogger(__name__)

# SAT-493M statistics, as used to train the satellite DINOv3 models. The Hub's
# preprocessor_config.json for those models carries the ImageNet values instead: do not trust it.
SAT493M = {"name": "sat493m", "mean": [0.430, 0.411, 0.296], "std": [0.213, 0.156, 0.143]}
IMAGENET = {"name": "imagenet", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
PRESETS = {"sat493m": SAT493M, "imagenet": IMAGENET, "lvd1689m": IMAGENET}


_WARNED: set[str] = set()


def normalization_for(model: str, override: str | dict | None = None) -> dict:
    """The constants for `model`, unless `override` names a preset, gives 'm,m,m/s,s,s' or is such a dict.

    The corpus is read from the model's own name (the Hub repo or the directory's last part), never from
    the folders above it: keep the Hub name when you download a model (`.../dinov3-...-sat493m-fp16`). A
    snapshot in the Hub's cache (`models--owner--name/snapshots/<commit>`) is named by the repo it holds.
    """
    if isinstance(override, dict):
        return {"name": override.get("name", "custom"), "mean": list(override["mean"]), "std": list(override["std"])}
    if override and override.lower() != "auto":
        key = override.lower()
        if key in PRESETS:
            return dict(PRESETS[key])
        return parse_custom(override)
    name = model_name(model).lower()
    if "sat493m" in name:
        return dict(SAT493M)
    if "lvd1689m" not in name and name not in _WARNED:
        _WARNED.add(name)  # once per process: a run asks before its model loads and again when it does
        log.warning("cannot tell from the name %r which corpus the model was trained on: using the ImageNet "
                    "normalisation; pass --normalization sat493m for a satellite (SAT-493M) model", name)
    return dict(IMAGENET)


def model_name(model: str) -> str:
    """The name of a Hub repo or model folder: its last part, or for a snapshot folder in the Hub's cache
    (`.../models--owner--name/snapshots/<commit>`, whose last part is a commit hash) the repo's name."""
    path = PurePath(model.rstrip("/\\"))
    if len(path.parts) >= 3 and path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


def parse_custom(text: str) -> dict:
    try:
        mean_text, std_text = text.split("/")
        mean = [float(v) for v in mean_text.split(",")]
        std = [float(v) for v in std_text.split(",")]
    except ValueError:
        mean = std = []
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise IndexerError(
            f"--normalization {text!r} is not one of {', '.join(PRESETS)}, auto, "
            "or 'm1,m2,m3/s1,s2,s3' with three finite means and three positive stds"
        )
    return {"name": "custom", "mean": mean, "std": std}
