"""Headless Chromium on a running ComfyUI server's UI: the one browser start-up of the tools and tests that
drive the real frontend (node sizes, frontend, layout, policy panel and run-from-UI tests).

``app_page(url)`` opens the page with a throw-away browser profile, records page errors and waits until the
frontend's app and graph exist; what a caller needs beyond that (extensions loaded, dialogs closed) it waits
for itself."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from devtools.comfy_env import NEWEST_FRONTEND_DIR

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FRONTENDS = {"pinned": None, "newest": NEWEST_FRONTEND_DIR}
"""The frontends the tests drive: the one ComfyUI 0.3.75 pins (None: its own) and the newest package's files."""
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def app_page(url: str, viewport: tuple[int, int] | None = None) -> Iterator[tuple]:
    """(page, page errors) of the UI at `url`, its app loaded; `viewport` (width, height), or playwright's."""
    from playwright.sync_api import sync_playwright

    home = tempfile.mkdtemp(prefix="rs-browser-home-")
    env = {**os.environ, "HOME": home, "XDG_CONFIG_HOME": home, "XDG_CACHE_HOME": home}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS, env=env)
        try:
            page = browser.new_page(**({"viewport": {"width": viewport[0], "height": viewport[1]}}
                                       if viewport else {}))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            yield page, errors
        finally:
            browser.close()
