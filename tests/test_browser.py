"""The app in a real headless Chromium (Debian's chromium, driven by Playwright)."""

import os
import shutil

import pytest

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
LIVE_IMG = "#txt2img-live img"


@pytest.fixture(scope="module")
def page(app_server):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"Chromium not found at {CHROMIUM}: install Debian's chromium (see .ci/run)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(app_server["url"])
        page.locator("#txt2img-prompt textarea, #txt2img-prompt input").wait_for(timeout=30_000)
        yield page
        browser.close()


def set_number(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def wait_for_new_src(page, old):
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); return i && i.src !== old; }",
                           arg=[LIVE_IMG, old], timeout=15_000)
    return page.locator(LIVE_IMG).get_attribute("src")


def test_generate_fills_the_step_viewer_then_scrub_and_switch_view(page, tmp_path):
    set_number(page, "txt2img-steps", 8)
    prompt = page.locator("#txt2img-prompt textarea, #txt2img-prompt input")
    prompt.fill("a large red circle in the center on a white background")
    prompt.press("Enter")  # keyboard-friendly: Enter generates
    # the progress bar reaches the end and the filmstrip holds every step plus the final picture
    page.locator("#txt2img-progress", has_text="done in").wait_for(timeout=60_000)
    assert page.locator("#txt2img-progress progress").get_attribute("value") == "8"
    assert page.locator("#txt2img-filmstrip img").count() == 9
    final_src = page.locator(LIVE_IMG).get_attribute("src")
    assert "final picture" in page.locator("#txt2img-numbers").inner_text()

    # drag the step slider back to the first step: the picture and the numbers change
    set_number(page, "txt2img-step", 0)
    page.locator("#txt2img-numbers", has_text="step 1/8").wait_for(timeout=10_000)
    first_x0 = wait_for_new_src(page, final_src)

    # switch the view: same step, another picture
    page.locator("#txt2img-view").get_by_text("ε̂ (predicted noise)").click()
    wait_for_new_src(page, first_x0)
    assert "step 1/8" in page.locator("#txt2img-numbers").inner_text()
    page.screenshot(path=str(tmp_path / "step_viewer.png"), full_page=True)


def test_generate_button_and_result_png(page):
    page.locator("#txt2img-generate").click()
    page.locator("#txt2img-progress", has_text="done in").wait_for(timeout=60_000)
    page.get_by_text("Seed", exact=False).first.wait_for()
    assert page.locator("text=/\\*?\\*?Seed \\d+/").count() >= 1


def test_paint_a_mask_in_the_inpaint_tab_and_get_a_result(page, tmp_path):
    from PIL import Image

    picture = Image.new("RGB", (64, 64), "white")
    picture.paste((255, 0, 0), (8, 8, 56, 56))
    picture.save(tmp_path / "red.png")
    page.get_by_role("tab", name="Inpaint").click()
    page.locator("#inpaint-editor input[type=file]").set_input_files(str(tmp_path / "red.png"))
    box = page.locator("#inpaint-editor canvas").first.bounding_box()
    page.wait_for_timeout(1000)
    page.locator("#inpaint-editor button[aria-label=Brush]").click()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy - 40)
    page.mouse.down()
    for dx in range(-40, 41, 8):  # a few strokes across the middle
        page.mouse.move(cx + dx, cy - 40, steps=4)
        page.mouse.move(cx + dx, cy + 40, steps=4)
    page.mouse.up()
    set_number(page, "inpaint-steps", 4)
    page.locator("#inpaint-prompt textarea, #inpaint-prompt input").fill("a blue circle")
    page.locator("#inpaint-generate").click()
    page.locator("#inpaint-progress", has_text="done in").wait_for(timeout=60_000)
    assert page.locator("#inpaint-filmstrip img").count() == 5
    assert page.locator("#inpaint-result img").count() == 1
    page.screenshot(path=str(tmp_path / "inpaint.png"), full_page=True)
