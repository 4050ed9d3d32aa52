"""The demo page at `/` in headless Chromium against a real `qa-serve` on the tiny model (marker `browser`).

Needs Debian's `chromium` at /usr/bin/chromium and the `playwright` package (its wheel bundles the driver; no
`playwright install`); skipped with the reason when either is missing. `QA_WRITE_SCREENSHOT=1` also writes the
screenshot to docs/demo-page.png (the README's picture). The page and its files load without the API key.
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
NEWS_QA = REPO / "tests" / "fixtures" / "news_qa.csv"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)"),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')"
)


@pytest.fixture
def server(start_server, tiny_model_dir: Path, tiny_adapters_dir: Path, tmp_path: Path):
    return start_server(
        {
            "QA_MODEL": str(tiny_model_dir),
            "QA_ADAPTERS_DIR": str(tiny_adapters_dir),
            "QA_CACHE_DIR": str(tmp_path / "cache"),
            "QA_DEFAULT_MAX_NEW_TOKENS": "3",
            # The GPU's plan on the 3 adapters (18 candidates), as the screenshot shows it.
            "QA_DEFAULT_PROMPTS": "zero-shot,principled",
            "QA_DEFAULT_STRATEGY": "beam",
            "QA_DEFAULT_MEMBERS": "3",
            "QA_BATCH_SYNC_MAX_ROWS": "2",
            "QA_API_KEY": "demo-secret",
            "QA_LOG_LEVEL": "warning",
        }
    )


def test_demo_page_asks_and_runs_a_batch_job(server, tmp_path: Path):
    # Open without a key (the page and its files), API calls with it (typed into the page).
    assert server.client.get("/").status_code == 200
    assert server.client.get("/static/demo.js").status_code == 200
    assert server.client.post("/answer", json={}).status_code == 401

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.base_url + "/")
            assert page.title() == "qa-ensemble demo"

            page.click("#ask")  # without the key: the 401 body is shown, not a blank page
            error = page.locator("#ask-error")
            error.wait_for(state="visible", timeout=30_000)
            assert "401 unauthorized" in error.text_content()

            page.fill("#api-key", "demo-secret")
            page.dispatch_event("#api-key", "change")
            page.click("#ask")
            page.locator("#answer-box").wait_for(state="visible", timeout=60_000)
            assert page.locator("#ask-error").is_hidden()
            rows = page.locator("#candidates tbody tr")
            assert rows.count() == 18  # 3 adapters x 2 prompts x 3 beams
            assert page.locator("#candidates tbody tr.winner").count() >= 1
            assert page.locator("#n-candidates").text_content() == "18"
            assert 0.0 <= float(page.locator("#confidence").text_content()) <= 1.0

            page.set_input_files("#batch-file", str(NEWS_QA))  # 4 rows > QA_BATCH_SYNC_MAX_ROWS: a job
            page.click("#batch-submit")
            download = page.locator("#job-download")
            download.wait_for(state="visible", timeout=120_000)
            assert page.locator("#job-status").text_content() == "done"
            assert page.locator("#job-done").text_content() == "4"
            assert page.locator("#batch-error").is_hidden()
            with page.expect_download() as fetched:
                download.click()
            csv = Path(fetched.value.path()).read_text(encoding="utf-8")
            assert csv.splitlines()[0] == "id,answer" and len(csv.splitlines()) == 5
            assert errors == []

            shot = tmp_path / "demo-page.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("QA_WRITE_SCREENSHOT") == "1":
                shutil.copyfile(shot, REPO / "docs" / "demo-page.png")
        finally:
            browser.close()
