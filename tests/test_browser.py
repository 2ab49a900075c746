"""The app in a real headless Chromium (Debian's chromium, driven by Playwright).

Every wait for a finished run first overwrites the progress line in the page (`mark_stale`): only a
new render from the server can then show "done in", so no test passes on what an earlier one left.
"""

import io
import os
import shutil

import pytest

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
LIVE_IMG = "#txt2img-live img"


@pytest.fixture(scope="module")
def browser(app_server):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"Chromium not found at {CHROMIUM}: install Debian's chromium (see .ci/run)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, app_server):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_server["url"])
    page.locator("#txt2img-prompt textarea, #txt2img-prompt input").wait_for(timeout=30_000)
    yield page
    page.close()


def set_number(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def mark_stale(page, tab):
    page.evaluate(f"document.querySelector('#{tab}-progress .ds-numbers').textContent = 'stale'")


def wait_done(page, tab, text="done in", timeout=90_000):
    page.locator(f"#{tab}-progress .ds-numbers", has_text=text).wait_for(timeout=timeout)
    return page.locator(f"#{tab}-progress").inner_text()


def picture(page, selector):
    from PIL import Image

    src = page.locator(selector).get_attribute("src")
    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


def live_frame_after(page, tab, step):
    """(picture src, its step) of a live frame shown after `step` while the run still goes on: read
    together, since one update sets both."""
    return page.evaluate_handle(f"""() => new Promise(done => {{ const poll = () => {{
        const p = document.querySelector('#{tab}-progress progress'), i = document.querySelector('#{tab}-live img');
        if (p && i && p.value > {step} && p.value < p.max) done([i.src, p.value]); else setTimeout(poll, 10); }};
        poll(); }})""").json_value()


def fetch(page, src):
    from PIL import Image

    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB").tobytes()


def wait_for_new_src(page, old, selector=LIVE_IMG):
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); return i && i.src !== old; }",
                           arg=[selector, old], timeout=15_000)
    return page.locator(selector).get_attribute("src")


def test_generate_at_the_defaults_then_scrub_switch_view_and_play(page, tmp_path):
    """Defaults (25 steps, model default scheduler, the best preview decoder): Enter generates; slider
    positions are step numbers; the numbers follow the scrubbed step; a view switch applies at once."""
    prompt = page.locator("#txt2img-prompt textarea, #txt2img-prompt input")
    prompt.fill("a large red circle in the center on a white background")
    mark_stale(page, "txt2img")
    prompt.press("Enter")  # keyboard-friendly: Enter generates
    assert "step 25/25" in wait_done(page, "txt2img")
    assert page.locator("#txt2img-progress progress").get_attribute("value") == "25"
    assert page.locator("#txt2img-filmstrip img").count() == 25
    labels = page.locator("#txt2img-filmstrip .caption-label")
    assert labels.first.inner_text() == "1 · 100%"
    assert page.evaluate("[...document.querySelectorAll('#txt2img-filmstrip .caption-label')]"
                         ".every(l => l.scrollWidth <= l.clientWidth + 1)"), "a filmstrip label is cut off"

    # the live picture is sent at the model's size and enlarged by the browser
    live = page.locator(LIVE_IMG)
    assert picture(page, LIVE_IMG).size == (64, 64) and live.bounding_box()["width"] >= 300
    assert page.locator("#txt2img-result img").bounding_box()["width"] >= 300  # a readable result

    # slider position 5 is step 5, and the progress line follows it
    final_src = live.get_attribute("src")
    set_number(page, "txt2img-step", 5)
    page.locator("#txt2img-numbers", has_text="step 5/25").wait_for(timeout=10_000)
    page.locator("#txt2img-progress", has_text="step 5/25").wait_for(timeout=10_000)
    assert page.locator("#txt2img-progress progress").get_attribute("value") == "5"
    step5 = wait_for_new_src(page, final_src)

    # a view switch applies at once, without moving the slider
    page.locator("#txt2img-view").get_by_text("ε̂ (predicted noise)").click()
    wait_for_new_src(page, step5)
    assert "step 5/25" in page.locator("#txt2img-numbers").inner_text()

    # Play replays from the current step to the end
    set_number(page, "txt2img-speed", 30)
    page.locator("#txt2img-play").click()
    page.locator("#txt2img-numbers", has_text="step 25/25").wait_for(timeout=20_000)
    page.locator("#txt2img-view").get_by_text("x̂0 (predicted picture)").click()
    page.screenshot(path=str(tmp_path / "step_viewer.png"), full_page=True)


def test_switching_the_view_during_a_run_changes_the_live_stream(page):
    set_number(page, "txt2img-steps", 12)
    page.locator("#txt2img-view").get_by_text("x̂0 (predicted picture)").click()
    page.get_by_text("Step previews").click()
    set_number(page, "txt2img-step-delay", 150)
    mark_stale(page, "txt2img")
    page.locator("#txt2img-generate").click()
    page.wait_for_function("() => { const p = document.querySelector('#txt2img-progress progress');"
                           " return p && p.max == 12 && p.value >= 2; }", timeout=30_000)
    page.locator("#txt2img-view").get_by_text("ε̂ (predicted noise)").click()
    src, step = live_frame_after(page, "txt2img", 4)  # a frame streamed after the switch, mid-run
    wait_done(page, "txt2img")
    # it is that step's ε̂, as the filmstrip (now ε̂) shows it
    assert fetch(page, src) == picture(page, f"#txt2img-filmstrip img >> nth={step - 1}").tobytes()
    set_number(page, "txt2img-step-delay", 0)
    page.locator("#txt2img-view").get_by_text("x̂0 (predicted picture)").click()


def test_a_stopped_run_shows_where_it_stopped_and_its_png_says_so(page):
    set_number(page, "txt2img-steps", 150)
    set_number(page, "txt2img-step-delay", 40)
    mark_stale(page, "txt2img")
    page.locator("#txt2img-generate").click()
    page.wait_for_function("() => { const p = document.querySelector('#txt2img-progress progress');"
                           " return p && p.max == 150 && p.value >= 3; }", timeout=30_000)
    page.locator("#txt2img-stop").click()
    text = wait_done(page, "txt2img", text="stopped at step")
    stopped_at = int(text.split("stopped at step ")[1].split()[0])
    assert 3 <= stopped_at < 150
    assert page.locator("#txt2img-progress progress").get_attribute("value") == str(stopped_at)
    assert f"Stopped at step: {stopped_at}" in page.locator("#txt2img-info").inner_text()
    set_number(page, "txt2img-step-delay", 0)
    set_number(page, "txt2img-steps", 25)


def test_preview_decoders_offered_are_the_loaded_ones(page, app_server):
    from pipelines.generation import decoder_names

    offered = page.locator("#txt2img-preview-decoder label").all_inner_texts()
    assert [o.strip() for o in offered] == decoder_names(app_server["manager"].get())


def test_paint_a_mask_in_the_inpaint_tab_at_strength_0_6(page, tmp_path):
    """With strength below 1 the run makes fewer steps: the totals say so and end full."""
    from PIL import Image

    picture_file = Image.new("RGB", (64, 64), "white")
    picture_file.paste((255, 0, 0), (8, 8, 56, 56))
    picture_file.save(tmp_path / "red.png")
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
    set_number(page, "inpaint-strength", 0.6)
    page.locator("#inpaint-prompt textarea, #inpaint-prompt input").fill("a blue circle")
    mark_stale(page, "inpaint")
    page.locator("#inpaint-generate").click()
    assert "step 15/15" in wait_done(page, "inpaint")  # 25 steps × strength 0.6
    assert page.locator("#inpaint-filmstrip img").count() == 15
    assert page.locator("#inpaint-result img").count() == 1
    page.screenshot(path=str(tmp_path / "inpaint.png"), full_page=True)


def test_controlnet_at_its_defaults_then_a_failed_run_clears_the_result(page, tmp_path):
    from PIL import Image, ImageDraw

    sketch = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(sketch).rectangle((16, 16, 48, 48), fill="black")
    sketch.save(tmp_path / "sketch.png")
    page.get_by_role("tab", name="ControlNet").click()
    page.locator("#controlnet-picture input[type=file]").set_input_files(str(tmp_path / "sketch.png"))
    page.locator("#controlnet-processed img").wait_for(timeout=30_000)
    page.locator("#controlnet-prompt textarea").fill("a green square on a white background")
    mark_stale(page, "controlnet")
    page.locator("#controlnet-generate").click()  # conditioning scale 1, 25 steps: the defaults
    assert "step 25/25" in wait_done(page, "controlnet")
    assert page.locator("#controlnet-result img").count() == 1

    # every tab's live stream follows a view switch made during the run
    set_number(page, "controlnet-steps", 8)
    page.locator("#controlnet-previews").get_by_text("Step previews").click()
    set_number(page, "controlnet-step-delay", 200)
    mark_stale(page, "controlnet")
    page.locator("#controlnet-generate").click()
    page.wait_for_function("() => { const p = document.querySelector('#controlnet-progress progress');"
                           " return p && p.max == 8 && p.value >= 2; }", timeout=30_000)
    page.locator("#controlnet-view").get_by_text("ε̂ (predicted noise)").click()
    src, step = live_frame_after(page, "controlnet", 4)
    wait_done(page, "controlnet")
    assert fetch(page, src) == picture(page, f"#controlnet-filmstrip img >> nth={step - 1}").tobytes()

    page.locator("#controlnet-picture button[aria-label='Remove Image']").click()
    page.locator("#controlnet-generate").click()
    wait_done(page, "controlnet", text="failed: No control picture")
    assert page.locator("#controlnet-result img").count() == 0  # the last run's picture is gone
    assert page.locator("#controlnet-live img").count() == 0
    assert "No control picture" in page.locator("#controlnet-info").inner_text()


def test_on_a_phone_generate_and_the_live_picture_share_one_screen(browser, app_server):
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        phone.goto(app_server["url"])
        phone.locator("#txt2img-prompt textarea").wait_for(timeout=30_000)
        phone.evaluate("window.scrollTo(0, 0)")
        generate, live = phone.locator("#txt2img-generate").bounding_box(), phone.locator("#txt2img-live").bounding_box()
        assert generate["y"] < live["y"] and live["y"] + live["height"] <= 844
    finally:
        phone.close()
