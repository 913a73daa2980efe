"""Cut the public-domain NAIP scenes in ../shared/data/naip into the bundled sample chips.

The NAIP files hold red, green, blue, near-infrared with no colour interpretation;
Pillow opens them as RGBA, so dropping the fourth band gives true colour.
Run once by a maintainer: `python scripts/make_sample.py ../shared/data/naip samples/naip`.
"""
import argparse
import shutil
from pathlib import Path

from PIL import Image


def cut_scene(scene_path: Path, out_dir: Path, *, chip: int, quality: int) -> int:
    with Image.open(scene_path) as scene:
        rgb = scene.convert("RGBA").convert("RGB") if scene.mode != "RGB" else scene.copy()
    date = scene_path.stem.rsplit("_", 1)[-1]
    count = 0
    for top in range(0, rgb.height - chip + 1, chip):
        for left in range(0, rgb.width - chip + 1, chip):
            tile = rgb.crop((left, top, left + chip, top + chip))
            tile.save(out_dir / f"naip_{date}_r{top:04d}_c{left:04d}.jpg", quality=quality)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scene_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--chip", type=int, default=128)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(
        cut_scene(path, args.out_dir, chip=args.chip, quality=args.quality)
        for path in sorted(args.scene_dir.glob("*.tif"))
    )
    licence = args.scene_dir / "LICENSE-opengeos-data.txt"
    if licence.exists():
        shutil.copy(licence, args.out_dir / licence.name)
    print(f"{total} chips written to {args.out_dir}")


if __name__ == "__main__":
    main()
