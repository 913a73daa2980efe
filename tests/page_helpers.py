"""Reading what the search page shows under Streamlit's AppTest (the `page` fixture that runs it is in conftest)."""
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

from helpers import REPO_ROOT

APP_PATH = REPO_ROOT / "ui" / "app.py"
CARD = re.compile(r"\*\*#(\d+)\*\* · score \*\*(-?\d+\.\d{4})\*\* · id (\d+)")
NO_QUERY = "Upload an image or pick an indexed one to see its nearest neighbours."


def run(target) -> AppTest:
    """Run (or rerun, after a widget interaction) the page; no foreseeable problem may end in an exception."""
    at = target.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def cards(at: AppTest) -> list[tuple[int, float, int]]:
    """(rank, score, image_id) of every result card on the page, in order."""
    found = [CARD.fullmatch(m.value) for m in at.markdown]
    return [(int(m[1]), float(m[2]), int(m[3])) for m in found if m]


def card_texts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if CARD.fullmatch(m.value)]


def pager_text(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("Page "))


def image_urls(at: AppTest) -> list[str]:
    """The media address of every picture in the main area; it changes exactly when the picture's bytes do."""
    return [image.proto.imgs[0].url for image in at.main.get("image")]


def button(at: AppTest, label: str, index: int = 0):
    return [b for b in at.button if b.label == label][index]


def chip(ui_ids: dict, index: int) -> tuple[Path, int]:
    path = sorted(ui_ids)[index]
    return Path(path), ui_ids[path]
