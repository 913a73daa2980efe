"""A benchmark's report saved as JSON and as its Markdown table, side by side, and the table printed."""
import json
from pathlib import Path


def save(report: dict, out_dir: Path, stem: str, table) -> None:
    """`out_dir`/`stem`.json and .md, the latter `table(report)`, which is also printed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = table(report)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{stem}.md").write_text(text)
    print(text)
