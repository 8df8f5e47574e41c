"""The web page in headless Chromium (DevTools protocol) against a FeedServer in its own thread.

Set C2P_WEB_SCREENSHOT=/tmp/page.png to save what the page looked like.
"""

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from c2p_stream.events import end_message, hello_message
from c2p_stream.feed import FeedServer

CHROMIUM = "/usr/bin/chromium"
N_EVENTS = 30
SCREENSHOT = Path(os.environ["C2P_WEB_SCREENSHOT"]) if os.environ.get("C2P_WEB_SCREENSHOT") else None


@contextmanager
def feed_in_thread(**options):
    """A started FeedServer whose loop runs in a daemon thread, as in the CLI."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FeedServer(port=0, hello=hello_message({"name": "page-test", "k": 4}), **options)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def publish_when_connected(server, stop, make_label_event):
    """Wait for the page's websocket, then publish N_EVENTS labels and `end`, as an engine would."""
    while server.clients == 0:
        if stop.wait(0.005):
            return
    for seq in range(N_EVENTS):
        speech = seq != N_EVENTS - 3  # one silent window
        server.publish_threadsafe(make_label_event(seq, speech=speech).to_message())
        time.sleep(0.005)
    server.publish_threadsafe(end_message("eof"))


class DevTools:
    """Headless Chromium driven over the DevTools protocol, with the `websockets` client."""

    def __init__(self, profile_dir):
        self.profile_dir = profile_dir
        self.process = None
        self.ws = None
        self.session = None
        self.next_id = 0

    async def open(self, url, timeout_s=20.0):
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1200,760", f"--user-data-dir={self.profile_dir}", "--remote-debugging-port=0",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active_port = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while len(lines := active_port.read_text().split() if active_port.exists() else []) < 2:
            assert time.monotonic() < deadline, "Chromium did not start its DevTools endpoint"
            assert self.process.poll() is None, "Chromium exited"
            await asyncio.sleep(0.05)
        self.ws = await connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_size=None)
        target = await self.call("Target.createTarget", url=url)
        attached = await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self.session = attached["sessionId"]

    async def call(self, method, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        await self.ws.send(json.dumps(message))
        while True:  # skip events until our reply
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), 20))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    async def evaluate(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def render(url, tmp_path, timeout_s=20.0):
    """The page's DOM once it shows the end of the stream (or at the timeout)."""
    browser = DevTools(tmp_path / "profile")
    try:
        await browser.open(url)
        deadline = time.monotonic() + timeout_s
        while await browser.evaluate("document.getElementById('status')?.textContent") != "ended":
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if SCREENSHOT:  # to look at the page by hand
            shot = await browser.call("Page.captureScreenshot", format="png")
            SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
        return await browser.evaluate("document.documentElement.outerHTML")
    finally:
        await browser.close()


def text_of(dom, element_id):
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"#{element_id} not in the page"
    return match.group(1).strip()


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is not installed")
@pytest.mark.parametrize("token", [None, "page-t0ken"])
def test_page_shows_the_live_labels(tmp_path, token, label_event_factory):
    with feed_in_thread(token=token) as server:
        stop = threading.Event()
        publisher = threading.Thread(target=publish_when_connected, args=(server, stop, label_event_factory))
        publisher.start()
        try:
            dom = asyncio.run(render(server.http_url + (f"?token={token}" if token else ""), tmp_path))
        finally:
            stop.set()
            publisher.join(10)

    last = label_event_factory(N_EVENTS - 1)
    assert text_of(dom, "status") == "ended"
    assert text_of(dom, "ended") == "stream ended: eof"
    assert text_of(dom, "seq") == str(last.seq)
    assert text_of(dom, "arousal-name") == last.arousal.name
    assert text_of(dom, "valence-name") == last.valence.name
    assert text_of(dom, "arousal-cluster") == f"A{last.arousal.cluster + 1}"
    assert text_of(dom, "arousal-trend") == "↑" and text_of(dom, "valence-trend") == "↓"
    assert text_of(dom, "pairing") == last.pairing
    assert text_of(dom, "direction") == last.direction
    assert text_of(dom, "model").startswith("name=page-test")
    for row in ("timeline-arousal", "timeline-valence"):
        cells = re.search(rf'id="{row}">(.*?)</div>', dom).group(1)
        assert cells.count('class="cell') == N_EVENTS
        assert cells.count('class="cell silent"') == 1
    assert dom.count('class="bar-row') == 2 * 4
