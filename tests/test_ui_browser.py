"""The search page in a real browser: `lookalike serve` in a subprocess, Debian's Chromium driven by Playwright.

Playwright never downloads a browser here: without /usr/bin/chromium these tests skip, or fail under CI.
Screenshots go to tests/artifacts/ (or $LOOKALIKE_TEST_ARTIFACTS).
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect
except ImportError:  # the browser tests skip (or fail in CI) without playwright
    PlaywrightTimeout, expect = TimeoutError, None

from helpers import REPO_ROOT
from ui import heatmaps

CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 60_000  # a slow two-core machine embeds, reruns and redraws well within this
SETTLED_S = 1.5  # a page whose buttons stay the same this long is taken as drawn
SERVER_START_S = 60
# The result pictures: st.image elements of the grid, not the colour scale (its caption says "similarity").
RESULT_IMAGES = "[data-testid=stImage]:not(:has([data-testid=stImageCaption])) img"
PATCH_CAPTION = re.compile(r"Patch row (\d+), column (\d+) of a (\d+)×(\d+) grid")


def unavailable(reason: str):
    """Skip on a developer's machine; in CI a missing browser is a broken set-up, not a reason to skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser tests: see .ci/run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def artifacts_dir() -> Path:
    folder = Path(os.environ.get("LOOKALIKE_TEST_ARTIFACTS") or REPO_ROOT / "tests" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- the server --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"lookalike serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"lookalike serve did not answer within {SERVER_START_S} s:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop the server's whole process group: `lookalike serve` runs Streamlit as a child of its own."""
    for sig, grace_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:  # the parent is gone; wait for the Streamlit child too
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def start_server(store_dir: Path, model_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`lookalike serve` in its own process group, answering on a free port; returns it and its address."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOOKALIKE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "indexer.cli", "serve", "--store", str(store_dir), "--port", str(port),
               "--model", str(model_dir)]
    with open(log_path, "wb") as log:  # a file, not a pipe: nothing blocks when nobody reads it
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_until_healthy(process, url, log_path)
    except BaseException:
        stop(process)
        raise
    return process, url


@pytest.fixture(scope="module")
def server(ui_store_dir, model_dir, tmp_path_factory):
    """The base address of `lookalike serve` on the test store, stopped when the module is done."""
    process, url = start_server(ui_store_dir, model_dir, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        yield url
    finally:
        stop(process)


# -- the browser -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM_PATH.is_file():
        unavailable(f"no Chromium at {CHROMIUM_PATH} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[test]')")
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM_PATH), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser, server, artifacts_dir, request):
    """A fresh tab; its last state is saved as a screenshot named after the test."""
    context = browser.new_context(viewport={"width": 1500, "height": 1400}, base_url=server)
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    yield tab
    tab.screenshot(path=artifacts_dir / f"{request.node.name}.png")
    context.close()


def open_page(page, address: str) -> None:
    page.goto(address)
    page.get_by_role("heading", name="lookalike").wait_for()


def wait_idle(page) -> None:
    """Until the page's script has finished its run and the browser has drawn all of it: a click while the page
    still redraws can be lost, and the script ends before the browser has drawn everything it sent (the result
    cards' buttons appear over a second or more after it, not in card order), so a `.first` button taken then
    may be another card's. Drawn means: the number of buttons has not changed for SETTLED_S."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=WAIT_MS)
    buttons = page.get_by_role("button")
    deadline, count, since = time.monotonic() + WAIT_MS / 1000, buttons.count(), time.monotonic()
    while time.monotonic() - since < SETTLED_S:
        if time.monotonic() > deadline:
            raise AssertionError(f"the page kept redrawing for {WAIT_MS / 1000:.0f} s")
        time.sleep(0.1)
        if (now := buttons.count()) != count:
            count, since = now, time.monotonic()


def card(page, rank: int):
    return page.get_by_text(f"#{rank} · score", exact=False).first


def result_sources(page) -> list[str]:
    return page.locator(RESULT_IMAGES).evaluate_all("images => images.map(image => image.src)")


def wait_until_all_redrawn(page, before: list[str]) -> list[str]:
    """Waits until every result picture has been replaced by a different one; returns the new addresses."""
    page.wait_for_function(
        """([selector, before]) => {
            const now = Array.from(document.querySelectorAll(selector), image => image.src);
            return now.length === before.length && now.every((src, i) => src !== before[i]);
        }""",
        arg=[RESULT_IMAGES, before],
    )
    return result_sources(page)


def click_patch(page, query_image, row: int, col: int, grid_shape) -> None:
    """Clicks the middle of token (row, col) of the query image as the browser shows it."""
    box = query_image.bounding_box()
    rows, cols = grid_shape
    x, y = (col + 0.5) * box["width"] / cols, (row + 0.5) * box["height"] / rows
    assert heatmaps.patch_at(x, y, display_size=(box["width"], box["height"]), grid_shape=grid_shape) == (row, col)
    query_image.click(position={"x": x, "y": y})


# -- the tests ---------------------------------------------------------------------------------
def test_upload_then_click_patches(page, ui_ids, artifacts_dir):
    path = Path(sorted(ui_ids)[9])
    open_page(page, "/?k=20")
    page.get_by_text("Upload an image or pick an indexed one").wait_for()
    page.locator("input[type=file]").set_input_files(path)

    page.get_by_text("#20 · score").wait_for()
    assert card(page, 1).inner_text() == f"#1 · score 1.0000 · id {ui_ids[str(path)]}"
    # a card's caption can be drawn before its buttons: wait (not just count) until all 20 are there
    expect(page.get_by_role("button", name="Search with this", exact=True)).to_have_count(20, timeout=WAIT_MS)
    page.get_by_text("best cosine similarity of each result patch to any query patch").wait_for()
    expect(page.locator(RESULT_IMAGES)).to_have_count(20, timeout=WAIT_MS)  # the pictures too can come late
    before = result_sources(page)
    assert len(before) == 20
    first_bytes = page.request.get(before[0]).body()
    page.screenshot(path=artifacts_dir / "upload-results.png")

    query_frame = page.frame_locator("iframe[src*='streamlit_image_coordinates']")
    query_image = query_frame.locator("img")
    query_image.wait_for()
    unmarked_query = query_image.get_attribute("src")
    grid_shape = (14, 14)  # 224 px / 16 px tokens
    click_patch(page, query_image, 2, 3, grid_shape)
    page.get_by_text("Patch row 2, column 3 of a 14×14 grid").wait_for()
    page.get_by_text("cosine similarity of each result patch to the selected query patch").wait_for()
    after_first = wait_until_all_redrawn(page, before)
    assert page.request.get(after_first[0]).body() != first_bytes
    assert query_image.get_attribute("src") != unmarked_query  # the query shows its own map and the marked patch
    page.screenshot(path=artifacts_dir / "patch-2-3.png")

    click_patch(page, query_image, 10, 12, grid_shape)
    page.get_by_text("Patch row 10, column 12 of a 14×14 grid").wait_for()
    wait_until_all_redrawn(page, after_first)
    assert page.get_by_text("Patch row 2, column 3").count() == 0
    assert PATCH_CAPTION.search(page.get_by_text("Patch row").inner_text()).groups() == ("10", "12", "14", "14")
    page.screenshot(path=artifacts_dir / "patch-10-12.png")

    wait_idle(page)
    page.get_by_role("button", name="Clear the selected patch").click()
    page.get_by_text("Click the image to compare one 16×16 patch with every result.").wait_for()
    page.wait_for_function(  # back to each patch's best match to any query patch: the first pictures again
        "([selector, before]) => JSON.stringify(Array.from(document.querySelectorAll(selector), i => i.src))"
        " === JSON.stringify(before)",
        arg=[RESULT_IMAGES, before],
    )


TRUNCATED_LABELS = """() => Array.from(document.querySelectorAll('[data-testid="stMain"] button'))
    .filter(button => button.offsetParent !== null)
    .filter(button => Array.from(button.querySelectorAll('*')).some(part => part.scrollWidth > part.clientWidth + 1))
    .map(button => button.innerText)"""


def test_a_narrow_window_puts_the_query_above_whole_labelled_results(browser, server, ui_ids, artifacts_dir):
    context = browser.new_context(viewport={"width": 800, "height": 900}, base_url=server)  # half a laptop screen
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    try:
        open_page(tab, "/?id=7&k=8")
        tab.get_by_text("#8 · score").wait_for()
        wait_idle(tab)
        query = tab.get_by_role("heading", name="Query").bounding_box()
        results = tab.get_by_role("heading", name="Nearest neighbours").bounding_box()
        assert results["y"] > query["y"] + 200 and abs(results["x"] - query["x"]) < 2  # below it, not beside
        assert tab.evaluate(TRUNCATED_LABELS) == []  # no button shows "Ran…" for "Random image"
        widths = [image.bounding_box()["width"] for image in tab.locator(RESULT_IMAGES).all()]
        assert len(widths) == 8 and min(widths) > 120 and max(widths) - min(widths) < 2  # no card left alone, wider

        query_image = tab.frame_locator("iframe[src*='streamlit_image_coordinates']").locator("img")
        query_image.scroll_into_view_if_needed()
        click_patch(tab, query_image, 5, 9, (14, 14))  # the picture is drawn smaller here: the click still maps
        tab.get_by_text("Patch row 5, column 9 of a 14×14 grid").wait_for()
        tab.screenshot(path=artifacts_dir / "narrow-window.png")
    finally:
        context.close()


def test_unreadable_upload_is_one_clear_line(page):
    open_page(page, "/")
    page.get_by_text("Upload an image or pick an indexed one").wait_for()
    page.locator("input[type=file]").set_input_files(
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"these are my notes, not a picture"}])
    alert = page.get_by_text("notes.png: not an image format lookalike reads")
    alert.wait_for()
    assert page.locator("[data-testid=stAlert]").count() == 1
    assert page.locator("[data-testid=stException]").count() == 0
    assert page.get_by_text("Traceback").count() == 0
    assert page.get_by_text("#1 · score").count() == 0


def test_search_with_this_puts_the_id_in_the_address(page, ui_ids):
    image_id = ui_ids[sorted(ui_ids)[4]]
    open_page(page, f"/?id={image_id}&k=8")
    page.get_by_text(f"#1 · score 1.0000 · id {image_id}", exact=True).wait_for()
    assert page.get_by_role("tab", selected=True).inner_text() == "Pick an indexed image"  # a bookmark's way in
    expect(page.get_by_label("Image id")).to_have_value(str(image_id), timeout=WAIT_MS)  # the box says which
    # each result's picture and the colour scale are named for screen readers (alt text, not decoration)
    expect(page.get_by_role("img", name=re.compile(r"^Result #\d+, id \d+, score -?\d\.\d{4}: its picture"))
           ).to_have_count(8, timeout=WAIT_MS)
    expect(page.get_by_role("img", name=f"Result #1, id {image_id}, score 1.0000: its picture under a heatmap of "
                                        "its patches' similarity to the query", exact=True)).to_have_count(1)
    expect(page.get_by_role("img", name=re.compile(r"^Colour scale of the heatmaps: best cosine similarity .* "
                                                   r"from -?\d\.\d+ \(left\) to -?\d\.\d+ \(right\)$"))
           ).to_have_count(1)
    second_id = int(card(page, 2).inner_text().rsplit(" ", 1)[1])
    click_until(page, page.get_by_role("button", name="Search with this", exact=True).nth(1),
                page.get_by_text(f"#1 · score 1.0000 · id {second_id}", exact=True))
    page.wait_for_function("id => new URLSearchParams(location.search).get('id') === String(id)", arg=second_id)
    expect(page.get_by_label("Image id")).to_have_value(str(second_id), timeout=WAIT_MS)
    assert "k=8" in page.url
    expect(page.get_by_text("#8 · score")).to_have_count(1, timeout=WAIT_MS)
    assert page.get_by_text("#9 · score").count() == 0


def click_until(page, button, shown) -> None:
    """Click once the page is idle, and wait for `shown`. A click that still lands while the page redraws (a late
    rerun) can be dropped: then click once more, but only if the address has not changed (every button clicked
    this way changes it), so that a click that registered but redraws slowly is not made twice (a second "Add"
    adds another result)."""
    wait_idle(page)
    before = page.url
    button.click()
    try:
        shown.wait_for(timeout=WAIT_MS // 4)
        return
    except PlaywrightTimeout:
        pass
    wait_idle(page)
    if page.url == before and not shown.is_visible():
        button.click()
    shown.wait_for(timeout=WAIT_MS)


def test_add_a_result_to_the_query_and_take_it_out(page, ui_ids, artifacts_dir):
    image_id = ui_ids[sorted(ui_ids)[6]]
    open_page(page, f"/?id={image_id}&k=8")
    page.get_by_text(f"#1 · score 1.0000 · id {image_id}", exact=True).wait_for()
    second_id = int(card(page, 2).inner_text().rsplit(" ", 1)[1])
    # the query itself is offered no "Add": the first such button is the second result's
    click_until(page, page.get_by_role("button", name="Add to the query", exact=True).first,
                page.get_by_text(f"2 examples: ids {image_id}, {second_id} (the first shown)", exact=True))
    page.wait_for_function("ids => new URLSearchParams(location.search).get('id') === ids",
                           arg=f"{image_id},{second_id}")
    page.get_by_role("button", name="Remove", exact=True).wait_for()
    page.screenshot(path=str(artifacts_dir / "several-examples.png"), full_page=True)
    click_until(page, page.get_by_role("button", name="Remove", exact=True),
                page.get_by_text(f"#1 · score 1.0000 · id {image_id}", exact=True))
    page.wait_for_function("id => new URLSearchParams(location.search).get('id') === String(id)", arg=image_id)


def test_compare_opens_side_by_side_and_closes(page, ui_ids, artifacts_dir):
    image_id = ui_ids[sorted(ui_ids)[9]]
    open_page(page, f"/?id={image_id}&k=4")
    page.get_by_text(f"#1 · score 1.0000 · id {image_id}", exact=True).wait_for()
    second_id = int(card(page, 2).inner_text().rsplit(" ", 1)[1])
    click_until(page, page.get_by_role("button", name="Compare", exact=True).nth(1),
                page.get_by_text("Side by side: the query and #2", exact=False))
    page.wait_for_function("id => new URLSearchParams(location.search).get('compare') === String(id)", arg=second_id)
    for who in ("The query", f"Result #2, id {second_id}"):  # both sides named for screen readers
        expect(page.get_by_role("img", name=f"{who}, each patch coloured by its best match in the other picture",
                                exact=True)).to_have_count(1, timeout=WAIT_MS)
    page.screenshot(path=str(artifacts_dir / "compare.png"), full_page=True)
    wait_idle(page)
    page.get_by_role("button", name="Close the comparison", exact=True).click()
    page.get_by_text("Side by side", exact=False).wait_for(state="detached", timeout=WAIT_MS)
    page.wait_for_function("() => !new URLSearchParams(location.search).has('compare')")


def settled_box(page, locator) -> dict:
    """The element's box once the page stops moving it (the frame grows when its picture loads, captions reflow)."""
    box = locator.bounding_box()
    for _ in range(40):
        page.wait_for_timeout(250)
        again = locator.bounding_box()
        if again == box and box["height"] > 50:
            return box
        box = again
    raise AssertionError(f"the element kept moving: {box}")


def drag_box(page, start, end, *, image_size) -> tuple:
    """Drags over the query picture from `start` to `end` (fractions of its width and height); waits for the page
    to state the part that drag makes (heatmaps.dragged_box of the same points) and returns it. A press that lands
    while a rerun still moves the picture is dragged again, once, as a user would on seeing the box."""
    frames = "iframe[src*='streamlit_image_coordinates']"
    page.wait_for_function("frames => document.querySelectorAll(frames).length === 1", arg=frames)  # the click one gone
    page.frame_locator(frames).locator("img").wait_for()
    for attempt in range(2):
        box = settled_box(page, page.locator(frames))  # the picture fills its frame; the mouse moves in page pixels
        (x1, y1), (x2, y2) = ((box["width"] * fx, box["height"] * fy) for fx, fy in (start, end))
        part = heatmaps.dragged_box(x1, y1, x2, y2, display_size=(box["width"], box["height"]), image_size=image_size)
        page.mouse.move(box["x"] + x1, box["y"] + y1)
        page.mouse.down()
        page.mouse.move(box["x"] + (x1 + x2) / 2, box["y"] + (y1 + y2) / 2, steps=5)
        page.mouse.move(box["x"] + x2, box["y"] + y2, steps=5)
        page.mouse.up()
        try:
            page.get_by_text(f"Part {part[0]},{part[1]} {part[2]}×{part[3]} px of the", exact=False).wait_for(
                timeout=WAIT_MS // 4 if attempt == 0 else WAIT_MS)
            return part
        except PlaywrightTimeout:
            if attempt == 1:
                raise


def test_drag_a_part_and_search_by_it(page, ui_ids, artifacts_dir):
    image_id = ui_ids[sorted(ui_ids)[11]]
    open_page(page, f"/?id={image_id}&k=8")
    page.get_by_text(f"#1 · score 1.0000 · id {image_id}", exact=True).wait_for()
    wait_idle(page)
    page.get_by_text("Select a part to search by", exact=True).click()
    page.get_by_text("Drag a box over the part to search by (128×128 px picture).", exact=True).wait_for()
    col, row, width, height = drag_box(page, (0.25, 0.25), (0.75, 0.75), image_size=(128, 128))
    assert (col, row, width, height) == (32, 32, 64, 64)
    page.screenshot(path=str(artifacts_dir / "part-dragged.png"), full_page=True)
    click_until(page, page.get_by_role("button", name="Search with this part", exact=True),
                page.get_by_text(f"part {col},{row} {width}×{height} px of id {image_id}", exact=False))
    page.wait_for_function("part => new URLSearchParams(location.search).get('part') === part",
                           arg=f"{col},{row},{width},{height}")
    # the part is not the picture: the whole picture's first card goes once the part's results are drawn
    page.get_by_text(f"#1 · score 1.0000 · id {image_id}", exact=True).wait_for(state="detached")
    page.get_by_text("#8 · score").wait_for()
    page.screenshot(path=str(artifacts_dir / "part-results.png"), full_page=True)
    click_until(page, page.get_by_role("button", name="Search with the whole picture", exact=True),
                page.get_by_text(f"#1 · score 1.0000 · id {image_id}", exact=True))
    page.wait_for_function("() => !new URLSearchParams(location.search).has('part')")


def test_less_like_this_puts_the_image_in_the_address(page, ui_ids):
    image_id = ui_ids[sorted(ui_ids)[13]]
    open_page(page, f"/?id={image_id}&k=8")
    page.get_by_text(f"#1 · score 1.0000 · id {image_id}", exact=True).wait_for()
    second_id = int(card(page, 2).inner_text().rsplit(" ", 1)[1])
    # the query itself is offered no "Less like this": the first such button is the second result's
    click_until(page, page.get_by_role("button", name="Less like this", exact=True).first,
                page.get_by_text("Less like these:", exact=True))
    page.wait_for_function("id => new URLSearchParams(location.search).get('unlike') === String(id)", arg=second_id)
    among_results = page.get_by_text(re.compile(rf"^#\d+ · score \S+ · id {second_id}$"))
    among_results.wait_for(state="detached")
    click_until(page, page.get_by_role("button", name="Remove", exact=True), among_results)
    page.wait_for_function("() => !new URLSearchParams(location.search).has('unlike')")


def test_stopping_serve_stops_the_page(ui_store_dir, model_dir, tmp_path):
    process, url = start_server(ui_store_dir, model_dir, tmp_path / "serve.log")
    try:
        process.terminate()  # what a service manager sends: to `lookalike serve` only, not its process group
        process.wait(timeout=15)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).close()
            except OSError:
                break  # nobody answers any more
            time.sleep(0.25)
        else:
            pytest.fail(f"{url} still answers 10 s after `lookalike serve` was stopped")
    finally:
        stop(process)


def test_scene_chips_on_the_map(browser, shared_data_dir, model_dir, embedder, tmp_path, artifacts_dir):
    """Real NAIP scenes cut into chips: the page draws their footprints on a map and offers GeoJSON."""
    from indexer.pipeline import ChipOptions, index_collection

    index_collection([str(shared_data_dir / "naip")], tmp_path / "scenes", embedder=embedder, workers=0,
                     progress=False, chips=ChipOptions(chip_size=256))
    process, url = start_server(tmp_path / "scenes", model_dir, tmp_path / "serve.log")
    context = browser.new_context(viewport={"width": 1500, "height": 1400}, base_url=url)
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    try:
        open_page(tab, "/?id=5&k=12")
        tab.get_by_text("#12 · score").wait_for()
        chart = tab.locator('[data-testid="stDeckGlJsonChart"]')
        chart.wait_for()
        chart.locator("canvas").first.wait_for()
        box = chart.bounding_box()
        assert box["width"] > 300 and box["height"] > 200
        tab.get_by_text("Footprints of this page's results coloured by score").wait_for()
        tab.get_by_role("button", name="Download footprints (GeoJSON)").wait_for()
        assert tab.get_by_text("m_4709963_se_14_1_20090818.tif · window").count() >= 1
        tab.screenshot(path=artifacts_dir / "test_scene_chips_on_the_map.png", full_page=True)
    finally:
        context.close()
        stop(process)


def _files_open_in_group(leader: int) -> list[str]:
    """The files the processes of `leader`'s process group hold open (the server and its Streamlit child)."""
    held = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != leader:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                held.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # gone meanwhile
            continue
    return held


def test_the_page_lets_go_of_a_store_a_swap_replaced(browser, ui_store_dir, model_dir, tmp_path):
    """A tab left open kept the store it was drawn from: its "Random image" button was given the store itself,
    so the store, its index in memory and its catalogue files stayed held after a swap replaced it (and, once the
    next swap deleted it, its disk space). The page now lets go of it as soon as the new store is opened."""
    import shutil

    from store.swap import swap_in

    live = tmp_path / "live"
    shutil.copytree(ui_store_dir, live, ignore=shutil.ignore_patterns("write.lock"))
    process, url = start_server(live, model_dir, tmp_path / "serve.log")
    context = browser.new_context(viewport={"width": 1500, "height": 1400}, base_url=url)
    context.set_default_timeout(WAIT_MS)
    try:
        left_open = context.new_page()
        open_page(left_open, "/?id=3&k=4")
        left_open.get_by_text("#4 · score").wait_for()
        wait_idle(left_open)
        shutil.copytree(live, tmp_path / "staged", ignore=shutil.ignore_patterns("write.lock"))
        swap_in(live, tmp_path / "staged")  # as rebuild does: the old store goes to live.previous
        second = context.new_page()
        open_page(second, "/?id=3&k=4")
        second.get_by_text("#4 · score").wait_for()
        wait_idle(second)
        previous = str(tmp_path / "live.previous") + os.sep
        assert [path for path in _files_open_in_group(process.pid) if path.startswith(previous)] == []
        assert any(path.startswith(str(live) + os.sep) for path in _files_open_in_group(process.pid))
    finally:
        context.close()
        stop(process)
