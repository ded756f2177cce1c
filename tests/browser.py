"""Open an HTML file in the system's headless Chromium (driven by Playwright) and report what
a reader would see: which images decoded, and any console or page errors.

Playwright only drives the browser: it uses the Chromium on PATH (Debian's `chromium`), so
nothing is downloaded (never run `playwright install`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_MS = 30_000

IMAGE_STATES = """images => images.map(image => ({
    alt: image.alt, natural_width: image.naturalWidth, complete: image.complete
}))"""


def chromium_path() -> str | None:
    """The first Chromium on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def render(html: Path) -> dict:
    """Load `html` and return its images' states and the errors logged while loading."""
    from playwright.sync_api import sync_playwright  # here: chromium_path() needs no Playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
    console_errors: list[str] = []
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        # Playwright starts Chromium with --no-sandbox by default, which running as root needs.
        browser = playwright.chromium.launch(executable_path=executable, timeout=TIMEOUT_MS)
        try:
            page = browser.new_page()

            def on_console(message) -> None:
                if message.type == "error":
                    console_errors.append(message.text)

            page.on("console", on_console)
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            # "load" waits for every <img> in the document, so the states below are final.
            page.goto(Path(html).resolve().as_uri(), wait_until="load", timeout=TIMEOUT_MS)
            images = page.eval_on_selector_all("img", IMAGE_STATES)
        finally:
            browser.close()
    return {"images": images, "console_errors": console_errors, "page_errors": page_errors}
