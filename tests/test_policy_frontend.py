"""The policy panel (js/policy_panel.js) in the real frontends (headless Chromium), pinned and newest:
its sidebar tab shows the active policy, a censored image of this browser's prompt with its scores,
and the operator view only after the operator token is entered."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from devtools.browser import CHROMIUM, FRONTENDS, app_page
from devtools.server import ComfyServer, started, write_policy
from devtools.toyworld_graphs import saved as toyworld_saved

TOKEN = "operator-secret-for-the-panel"
POLICY = {"version": 2, "name": "panel test policy", "operator_token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
          "input": {"unsafe_words": ["crimson", "gore"], "action": "rewrite"},
          "output": {"scores": [{"kind": "toyworld_red", "threshold": 0.03}], "censor": {"mode": "black"}}}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs it via apt as root)"),
]


@pytest.mark.parametrize("which", sorted(FRONTENDS))
def test_the_policy_tab_shows_the_policy_a_censored_image_and_the_operator_view(tmp_path, which):
    pytest.importorskip("playwright.sync_api")
    base = str(tmp_path / "server")
    write_policy(base, POLICY)
    settings = os.path.join(base, "user", "default")
    os.makedirs(settings, exist_ok=True)
    with open(os.path.join(settings, "comfy.settings.json"), "w") as f:   # no first-run templates dialog
        json.dump({"Comfy.TutorialCompleted": True}, f)
    with started(ComfyServer(base, front_end_root=FRONTENDS[which])) as server, \
            app_page(server.url) as (page, errors):
        page.wait_for_function("() => window.app && window.app.extensions.some(e => e.name === "
                               "'responsible-steering.policy')", timeout=120_000)
        page.wait_for_timeout(2000)
        for _ in range(20):                  # close the welcome / templates dialog, whichever appears
            if page.locator(".p-dialog-mask").count() == 0:
                break
            close = page.locator(".p-dialog-close-button")
            if close.count():
                close.first.click()
            else:
                page.keyboard.press("Escape")
            page.wait_for_timeout(500)
        page.locator(".pi-shield").first.click()
        panel = page.get_by_text("Server safety policy").locator("..")
        page.get_by_text(f"Active: {POLICY['name']}").wait_for(timeout=30_000)
        assert "censored (black)" in panel.inner_text() and "unsafe_words" not in panel.inner_text()
        # a red circle from this browser's client id: the executed message carries the guard's records
        page.evaluate("""async (prompt) => {
            const r = await window.app.api.fetchApi('/prompt', {method: 'POST',
                body: JSON.stringify({prompt, client_id: window.app.api.clientId})});
            if (r.status !== 200) throw new Error(await r.text());
        }""", toyworld_saved("a red circle", "from-browser"))
        page.get_by_text("image 1: censored (black)").wait_for(timeout=120_000)
        assert "toyworld_red" in panel.inner_text()
        page.locator("input[type=password]").fill(TOKEN)
        page.get_by_text("Show policy and audit").click()
        page.get_by_text("Latest audit records").wait_for(timeout=30_000)
        text = panel.inner_text()
        assert '"unsafe_words"' in text and hashlib.sha256(TOKEN.encode()).hexdigest() not in text
        assert "prompt queued" in text
    assert not [e for e in errors if "responsible" in e.lower() or "policy" in e.lower()], errors
