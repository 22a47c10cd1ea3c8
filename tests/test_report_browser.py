"""report.html opened in a real browser: headless Chromium, driven through the Chrome DevTools
Protocol over a pipe (``--remote-debugging-pipe``: NUL-separated JSON on the child's fds 3 and
4), so no Python package beyond the standard library is needed. The page must load with every
image decoded and no console error, and show the outcome before the folded configuration.

Skipped only when no Chromium is installed (Debian: ``apt-get install chromium``; CI installs it).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("matplotlib")

from mlplab.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TIMEOUT = 60.0  # seconds for any one answer; a page of five figures loads in well under one


def find_chromium() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium and one page, over the DevTools pipe.

    ``open(url)`` loads a page and waits for its load event; ``evaluate(expression)`` returns a
    JavaScript value; ``problems`` lists the console errors, uncaught exceptions and failed
    loads the page reported (Runtime and Log events of level error)."""

    def __init__(self, executable: str, profile):
        # The browser reads commands on fd 3 and writes answers on fd 4. A small Python process
        # moves the pipe ends there, then becomes the browser (a preexec_fn would run Python in
        # a forked child, unsafe with threads; POSIX sh cannot name descriptors above 9). The
        # ends are first moved above 10, so that moving one cannot overwrite the other.
        commands_read, commands_write = (_high_fd(fd) for fd in os.pipe())
        answers_read, answers_write = (_high_fd(fd) for fd in os.pipe())
        plumbing = (f"import os, sys; os.dup2({commands_read}, 3); os.dup2({answers_write}, 4); "
                    f"os.close({commands_read}); os.close({answers_write}); os.execv(sys.argv[1], sys.argv[1:])")
        args = [
            sys.executable, "-c", plumbing, executable,
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank",
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, pass_fds=(commands_read, answers_write))
        os.close(commands_read)
        os.close(answers_write)
        self.commands = os.fdopen(commands_write, "wb", buffering=0)
        self.answers: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, args=(answers_read,), daemon=True)
        self.reader.start()
        self.next_id = 0
        self.events: list[dict] = []
        self.session = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.resize(1280, 800)  # a laptop's screen, whatever the headless default

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _read(self, fd) -> None:
        buffer = b""
        with os.fdopen(fd, "rb", buffering=0) as stream:
            while chunk := stream.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self.answers.put(json.loads(message))
        self.answers.put(None)  # the browser closed the pipe

    def _next(self, deadline: float) -> dict:
        try:
            message = self.answers.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("Chromium did not answer in time") from None
        if message is None:
            raise RuntimeError(f"Chromium closed the DevTools pipe (exit status {self.process.poll()})")
        return message

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        self.commands.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            answer = self._next(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, event: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        for seen in self.events:
            if seen.get("method") == event:
                return seen
        while True:
            message = self._next(deadline)
            self.events.append(message)
            if message.get("method") == event:
                return message

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path, width: int = 1280) -> None:
        """The whole page at ``width`` CSS pixels as a PNG (for a person to look at)."""
        self.resize(width, 800)
        self.resize(width, self.evaluate("document.documentElement.scrollHeight"))  # once laid out at that width
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        self.resize(1280, 800)

    @property
    def problems(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console." + params["type"] + ": " + " ".join(
                    str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                thrown = details.get("exception", {}).get("description") or details.get("text")
                found.append(f"exception: {thrown}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        return found

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.commands.close()


def _high_fd(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


# Every image of the page: where its bytes came from, its pixel width once loaded (0 when it
# failed) and whether the browser can decode it. (A PNG cut short still shows its top part,
# so no browser check sees that; test_report.py compares the embedded bytes with the files.)
IMAGES = """Promise.all(Array.from(document.images).map(img => img.decode().then(() => true, () => false).then(
    decoded => ({scheme: img.currentSrc.split(':')[0], complete: img.complete, width: img.naturalWidth,
                 decoded: decoded, alt: img.alt}))))"""
# The order a reader meets things in: section headings and whether each fold starts closed.
LAYOUT = """({
    headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
    folds: Array.from(document.querySelectorAll('details')).map(d => {
        let heading = d;
        while (heading && heading.tagName !== 'H2') heading = heading.previousElementSibling;
        return {summary: d.querySelector('summary').textContent, open: d.open,
                section: heading && heading.textContent, top: d.getBoundingClientRect().top};
    }),
    firstFigureTop: document.querySelector('figure').getBoundingClientRect().top,
    lastFigureBottom: Array.from(document.querySelectorAll('figure')).pop().getBoundingClientRect().bottom,
    outcome: Array.from(document.querySelectorAll('h2 + p')).map(p => p.textContent)[0]
})"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (looked for " + ", ".join(BROWSERS) + "); Debian: apt-get install chromium")
    chrome = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    """A finished digits run with gradients tracked, so that the page holds all five figures."""
    import mlplab

    run_dir = tmp_path_factory.mktemp("browser") / "run"
    mlplab.train(out=str(run_dir), dataset="digits", hidden_dims=[32], epochs=3, lr=0.1, validation_size=300,
                 quiet=True, report=False, track_gradients=5)
    write_report(run_dir)
    return run_dir


def test_the_report_loads_in_chromium_with_every_image_and_no_console_error(browser, report_page):
    browser.open((report_page / "report.html").as_uri())
    images = browser.evaluate(IMAGES)
    assert len(images) == 5
    for image in images:
        assert image["scheme"] == "data" and image["complete"] and image["width"] > 0 and image["decoded"], image
    assert browser.problems == []


def test_in_chromium_the_outcome_and_figures_come_first_and_the_configuration_is_folded(browser, report_page):
    summary = json.loads((report_page / "summary.json").read_text())
    browser.open((report_page / "report.html").as_uri())
    layout = browser.evaluate(LAYOUT)
    assert layout["headings"][:2] == ["Outcome", "Training"]
    assert layout["headings"][-1] == "Configuration"
    assert layout["outcome"].startswith(f"Test accuracy {100 * summary['test_accuracy']:.2f}%")
    # The first figure is on the first screen (1280 x 800); the configuration comes folded,
    # below every figure.
    assert layout["firstFigureTop"] < 800
    folds = {fold["summary"].split(" (")[0]: fold for fold in layout["folds"]}
    assert set(folds) == {"Per-epoch numbers", "Training options", "Data", "Environment"}
    assert not any(fold["open"] for fold in folds.values())
    assert folds["Per-epoch numbers"]["section"] == "Training"
    for name in ("Training options", "Data", "Environment"):
        assert folds[name]["section"] == "Configuration"
        assert folds[name]["top"] > layout["lastFigureBottom"]


def test_the_browser_check_sees_a_missing_image_and_a_console_error(browser, tmp_path):
    # The checks above are only as good as the browser's reports: a broken page must show up in both.
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="absent.png" alt="absent">'
                    '<script>console.error("drawn wrong")</script></body></html>')
    browser.open(page.as_uri())
    (image,) = browser.evaluate(IMAGES)
    assert image["width"] == 0 and not image["decoded"]
    problems = browser.problems
    assert any("drawn wrong" in problem for problem in problems), problems
    assert any("absent.png" in problem for problem in problems), problems
