"""A ComfyUI server over HTTP, as the evaluation uses it: POST /prompt, poll /history, GET /view.

Design: standard library only (urllib), so a worker needs neither ComfyUI nor torch. Every request
has a timeout. Failures are sorted into the two cases the scheduler treats differently:
* ``PromptFailed`` - the server answered, and refused or failed *this prompt* (validation error,
  an exception in a node): recorded for the prompt, which is not retried elsewhere;
* ``ServerUnavailable`` - the server did not answer (refused connection, reset, timeout, HTTP 5xx
  on a request that is not the prompt's own): the prompt goes back in the queue for another server.
Connection errors are retried a few times before they count, so a short hiccup is not a death.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

RETRIES = 3
RETRY_PAUSE_S = 0.5


class PromptFailed(ValueError):
    """The server refused or failed one prompt (its message is kept for the results)."""


class ServerUnavailable(ConnectionError):
    """The server did not answer in time, or not at all."""


@dataclass(frozen=True)
class Finished:
    """A finished prompt: its /history entry and the server's execution time (s, None when not reported)."""
    prompt_id: str
    entry: dict
    execution_s: float | None


class ComfyClient:
    def __init__(self, url: str, request_timeout: float = 30.0, poll_s: float = 0.05):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"ComfyUI server URL: expected http(s)://HOST:PORT; got {url!r}")
        self.url = url.rstrip("/")
        self.request_timeout = request_timeout
        self.poll_s = poll_s

    def request(self, path: str, data: dict | None = None) -> bytes:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body,
                                     headers={"Content-Type": "application/json"} if body else {})
        last: Exception | None = None
        for attempt in range(RETRIES):
            try:
                with urllib.request.urlopen(req, timeout=self.request_timeout) as r:
                    return r.read()
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    raise
                last = e
            except (OSError, TimeoutError) as e:   # URLError, refused, reset, socket timeout
                last = e
            if attempt + 1 < RETRIES:
                time.sleep(RETRY_PAUSE_S)
        raise ServerUnavailable(f"{self.url}{path}: {type(last).__name__}: {last}")

    def get_json(self, path: str):
        return json.loads(self.request(path))

    def ping(self) -> dict:
        return self.get_json("/system_stats")

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def submit(self, prompt: dict, client_id: str) -> str:
        try:
            answer = json.loads(self.request("/prompt", {"prompt": prompt, "client_id": client_id}))
        except urllib.error.HTTPError as e:
            raise PromptFailed(f"refused ({e.code}): {e.read().decode(errors='replace')[:2000]}") from None
        if answer.get("node_errors"):
            raise PromptFailed(f"refused: {json.dumps(answer['node_errors'])[:2000]}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float) -> Finished:
        """Poll /history until the prompt finished; PromptFailed on its error, ServerUnavailable after
        `timeout` seconds (a hung or overloaded server: the scheduler re-queues the prompt)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("status_str") == "error":
                raise PromptFailed(f"failed: {error_message(status)}")
            if status.get("completed"):
                return Finished(prompt_id, entry, execution_time(status))
            time.sleep(self.poll_s)
        raise ServerUnavailable(f"{self.url}: prompt {prompt_id} not finished after {timeout:.0f} s")

    def image(self, ref: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                                        "type": ref.get("type", "output")})
        try:
            return self.request(f"/view?{query}")
        except urllib.error.HTTPError as e:
            raise PromptFailed(f"image {ref.get('filename')} not served ({e.code})") from None


def error_message(status: dict) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message', '')}"[:2000]
    return json.dumps(status.get("messages", []))[:2000]


def execution_time(status: dict) -> float | None:
    stamps = {m[0]: m[1].get("timestamp") for m in status.get("messages", []) if len(m) == 2 and isinstance(m[1], dict)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return (end - start) / 1000 if start and end else None
