"""The review reports in a real headless Chromium, driven through the DevTools protocol over
a pipe (``--remote-debugging-pipe``: the Python standard library only, no websocket client,
no port): no console error, every image decoded, the region table as long as the GeoJSON, a
click on a header sorts the table. The pages are those of :mod:`tests.report_fixtures`.

Chromium comes from Debian (``apt-get install -y chromium``); without it the browser test is
skipped, or fails when ``WSI_AI_REQUIRE_BROWSER=1`` (set by ``.ci/run``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.report_fixtures import SYNTHETIC, Out, demo_out, synthetic_out
from wsi_ai.report.slide import MAX_REGIONS


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Out:
    return demo_out(tmp_path_factory)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Out:
    return synthetic_out(tmp_path_factory)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe``: JSON messages separated by
    NUL bytes on the browser's fds 3 (in) and 4 (out); no port, no websocket library."""

    def __init__(self, exe: str, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # above 9, so that bash's redirections below cannot clobber them
        child_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser)
        os.close(from_browser)
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        bash = shutil.which("bash") or "/bin/bash"
        self._proc = subprocess.Popen(
            [bash, "-c", f'exec "$0" "$@" 3<&{child_in} 4>&{child_out}', exe, *args],
            pass_fds=(child_in, child_out),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session: str = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise EOFError(f"chromium exited ({self._proc.poll()})")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: bool = False
    ) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 10
        while True:
            answer = self._next(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result

    def open(self, path: Path) -> None:
        """Load ``path`` and wait for its load event (every image fetched and decoded)."""
        self.events.clear()
        self.send("Page.navigate", {"url": path.as_uri()}, session=True)
        deadline = time.monotonic() + 10
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            self._next(deadline)

    def evaluate(self, expression: str) -> Any:
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.send("Runtime.evaluate", params, session=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            params = {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            self.send("Input.dispatchMouseEvent", params, session=True)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser errors (CSP refusals among them)."""
        self.evaluate("0")  # everything the page logged so far arrives before this answer
        found = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                found.append(json.dumps(p.get("exceptionDetails", {}))[:300])
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                found.append(p["entry"].get("text", ""))
        return found

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, TimeoutError, RuntimeError):
            self.send("Browser.close")
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._write)
        os.close(self._read)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    exe = _chromium()
    if exe is None or shutil.which("bash") is None:
        reason = "chromium not installed (apt-get install chromium)"
        if os.environ.get("WSI_AI_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"{reason}; WSI_AI_REQUIRE_BROWSER is set")
        pytest.skip(reason)
    devtools = DevTools(exe, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield devtools
    finally:
        devtools.close()


PAGE_STATE = """JSON.stringify({
  images: Array.from(document.images).map(i => [i.complete, i.naturalWidth]),
  regions: document.querySelectorAll("#regions tbody tr").length,
  scripts: document.scripts.length,
})"""

COLUMN = """(() => {
  const cells = Array.from(document.querySelectorAll("#slides tbody tr"));
  return cells.map(r => r.cells[%d].textContent.trim());
})()"""

HEADER = """(() => {
  const th = Array.from(document.querySelectorAll("#slides thead th"))
    .find(h => h.textContent.trim() === %s);
  th.scrollIntoView();
  const box = th.getBoundingClientRect();
  return [box.x + box.width / 2, box.y + box.height / 2, th.cellIndex];
})()"""


def _sort_by(browser: DevTools, header: str) -> list[str]:
    x, y, index = browser.evaluate(HEADER % json.dumps(header))
    browser.click(x, y)
    values: list[str] = browser.evaluate(COLUMN % index)
    return values


def test_reports_in_headless_chromium(demo: Out, synthetic: Out, browser: DevTools) -> None:
    start = time.monotonic()
    for out in (demo, synthetic):
        for name, report in out.reports.items():
            browser.open(report)
            state = json.loads(browser.evaluate(PAGE_STATE))
            assert state["images"] and all(done and w > 0 for done, w in state["images"]), state
            doc = json.loads((out.out / "slides" / name / "regions.geojson").read_text())
            assert state["regions"] == min(MAX_REGIONS, len(doc["features"]))
            assert state["scripts"] == 0
            assert browser.errors() == [], name

    browser.open(synthetic.summary)
    assert browser.errors() == []
    names = browser.evaluate(COLUMN % 1)
    assert [n.split(" ")[0] for n in names] == ["c.svs", SYNTHETIC, "b.svs", "d.svs"]
    assert _sort_by(browser, "Probability") == ["0.600", "0.812", "0.950", "0.990"]
    assert _sort_by(browser, "Probability") == ["0.990", "0.950", "0.812", "0.600"]
    slides = [n.split(" ")[0] for n in _sort_by(browser, "Slide")]
    assert slides == sorted(slides, key=str.lower)
    assert _sort_by(browser, "#") == ["1", "2", "3", "4"]  # back to the triage order

    browser.open(demo.summary)
    assert browser.errors() == []
    assert _sort_by(browser, "Regions") == ["1", "2"]
    assert time.monotonic() - start < 20
