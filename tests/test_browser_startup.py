"""The page comes first: a browser opens it while the model stack imports, in a process of its own.

Apart from tests/test_browser.py, whose module-wide page holds a playwright session: two sync sessions cannot
run in one thread."""

from test_browser import CHROMIUM, FLAGS, playwright_api  # the same skips as there


def test_the_page_comes_first_and_turns_generate_on_when_the_model_is_ready(tmp_path):
    """A first --demo start: the page opens while the demo models are written and the model stack imports."""
    from server import Server

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # before the app: opening is quick
        server = Server(tmp_path / "data", "--demo").start(wait_for_model=False)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(server.url)
            page.wait_for_selector("#startup-status", timeout=60_000)
            assert "Loading model" in page.inner_text("#startup-status")
            assert page.locator("#generate").is_disabled() and "\nModel: " not in server.log()
            page.wait_for_function("!document.querySelector('#generate').disabled", timeout=180_000)
            assert "\nModel: homegrown-demo-base" in server.log()
            page.wait_for_selector("#startup-status", state="hidden", timeout=10_000)
            assert page.input_value("#checkpoint input") == "homegrown-demo-base"  # the lists are filled
        finally:
            server.stop()
            browser.close()
