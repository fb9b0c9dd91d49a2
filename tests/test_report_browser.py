"""The HTML report in a real browser: headless Debian chromium driven over the DevTools
protocol on a pipe (``--remote-debugging-pipe``: no port, no extra package).

Checks: no console errors or exceptions, no network request besides the file itself, no
dialog, the SVG chart has a non-zero size, the XSS payloads of the fixture run (the partial
run of tests/fixtures/make_run.py, written by the real audit code) show as text
and nothing runs (document.title unchanged, no script/handler/javascript: link in the DOM),
no horizontal scrolling of the page at 200% zoom (640 CSS px), and it prints to PDF.
The verdict matrix and the evidence table fit a 1280x800 window (also with 25 groups), evidence rows
stay one to three lines tall, and 1280x800 screenshots of the top, the matrix, the evidence and the
distillation cards are saved for a person (and CI) to look at in $BEQUEATH_ARTEFACTS (default: the
test's tmp folder).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--remote-debugging-pipe"]


def _find_chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _chromium() -> str:
    """Debian's chromium; the test setup installs it with apt-get when running as root (as CI does)."""
    found = _find_chromium()
    if not found and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium fonts-dejavu-core",
                       shell=True, env=env, capture_output=True, timeout=900)
        found = _find_chromium()
    if not found:
        pytest.fail("chromium not found: install Debian's package with `apt-get install -y chromium`")
    return found


class Browser:
    """A minimal DevTools-protocol client over chromium's pipe (fd 3: commands in, fd 4: out)."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds() -> None:  # runs in the child before it closes fds other than pass_fds
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen([_chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     preexec_fn=fds, pass_fds=(3, 4),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            if not select.select([self._r], [], [], max(0.0, deadline - time.time()))[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.time() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read_message(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - the process is killed below either way
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._w)
        os.close(self._r)


@pytest.fixture(scope="module")
def page(tmp_path_factory, audit_runs):
    """The fixture report loaded in chromium: (browser, session id, page url, report folder)."""
    from reports.cli import render

    out = tmp_path_factory.mktemp("report")
    render(audit_runs["partial"], out, ("html",))
    browser = Browser(tmp_path_factory.mktemp("profile"))
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}, session=session)
        url = (out / "report.html").as_uri()
        browser.events.clear()
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        time.sleep(0.5)  # let late console messages arrive
        browser.send("Runtime.evaluate", {"expression": "1"}, session=session)
        yield browser, session, url, out
    finally:
        browser.close()


def _eval(browser: Browser, session: str, js: str):
    res = browser.send("Runtime.evaluate", {"expression": js, "returnByValue": True}, session=session)
    assert "exceptionDetails" not in res, res
    return res["result"].get("value")


def test_no_console_errors_network_or_dialogs(page):
    browser, _, url, _ = page
    methods = [e.get("method") for e in browser.events]
    console = [e["params"] for e in browser.events if e.get("method") == "Runtime.consoleAPICalled"]
    logs = [e["params"]["entry"] for e in browser.events if e.get("method") == "Log.entryAdded"]
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert "Page.loadEventFired" in methods
    assert "Runtime.exceptionThrown" not in methods
    assert "Page.javascriptDialogOpening" not in methods  # alert(1) never ran
    assert console == []
    assert [e for e in logs if e.get("level") in ("error", "warning")] == []
    assert requests == [url]  # the file itself and nothing else


def test_xss_payloads_are_text_and_nothing_runs(page):
    browser, session, _, _ = page
    assert _eval(browser, session, "document.title") == "bequeath audit: which biases did each student inherit?"
    assert _eval(browser, session, "document.scripts.length") == 0
    assert _eval(browser, session, "document.querySelectorAll('img').length") == 0
    assert _eval(browser, session, "document.querySelectorAll('a[href^=\"javascript:\" i]').length") == 0
    handlers = _eval(browser, session,
                     "[...document.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
                     ".filter(n => n.startsWith('on')).length")
    assert handlers == 0
    text = _eval(browser, session, "document.body.textContent")
    for payload in ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
                    '<a href="javascript:alert(1)">x</a>', "<script>document.title='pwned'</script>"):
        assert payload in text


def test_charts_have_size_and_first_screen_answers(page):
    browser, session, _, out = page
    sizes = _eval(browser, session, "[...document.querySelectorAll('figure svg')]"
                                    ".map(s => {const r = s.getBoundingClientRect(); return [r.width, r.height];})")
    assert len(sizes) == 1 and all(w > 200 and h > 50 for w, h in sizes), sizes
    # the first screen (1280x800) shows the headline and each student's gate status
    first = _eval(browser, session, "[...document.querySelectorAll('.student')]"
                                    ".map(e => [e.getBoundingClientRect().top, e.querySelector('.status').textContent])")
    assert [s for _, s in first] == ["gate ERROR", "gate ERROR"] and all(top < 800 for top, _ in first)
    assert _eval(browser, session, "document.querySelector('.lead').textContent").startswith("Teacher smollm2-135m was compared")


def _artefacts(default: Path) -> Path:
    target = Path(os.environ.get("BEQUEATH_ARTEFACTS") or default)
    target.mkdir(parents=True, exist_ok=True)
    return target


def test_screenshots_at_1280x800(page):
    browser, session, _, out = page
    target = _artefacts(out)
    for name, selector in (("top", "#top"), ("matrix", "#matrix"), ("evidence", ".scroll.evidence"), ("cards", "#cards")):
        _eval(browser, session, f"document.querySelector({selector!r}).scrollIntoView(); window.scrollY")
        png = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        (target / f"report_1280x800_{name}.png").write_bytes(png)
    _eval(browser, session, "window.scrollTo(0, 0); 0")
    assert sorted(p.name for p in target.glob("report_1280x800_*.png")) == [
        f"report_1280x800_{n}.png" for n in ("cards", "evidence", "matrix", "top")]


FIT = """[...document.querySelectorAll(%r)].map(e => [e.scrollWidth, e.clientWidth])"""


def test_matrix_and_evidence_fit_1280_and_rows_stay_short(page):
    browser, session, _, _ = page
    matrix = _eval(browser, session, FIT % "#matrix .scroll")
    evidence = _eval(browser, session, FIT % ".scroll.evidence")
    assert len(matrix) == 2 and all(sw <= cw for sw, cw in matrix), matrix
    assert evidence and all(sw <= cw for sw, cw in evidence), evidence
    heights, line = _eval(browser, session, "[[...document.querySelectorAll('table.evidence tbody tr')]"
                                            ".map(r => r.getBoundingClientRect().height),"
                                            " parseFloat(getComputedStyle(document.querySelector('table.evidence td')).lineHeight)]")
    assert heights and max(heights) <= 3 * line + 12, (max(heights), line)  # 3 lines + padding and border
    assert _eval(browser, session, "document.querySelectorAll('table.evidence details.why[open]').length") == 0


def test_matrix_with_25_groups_fits_1280(page, tmp_path, audit_runs):
    """A synthetic view: the fixture run's view model with a matrix of 25 groups, built directly."""
    import copy

    from audit.gate import Policy, evaluate, load_run
    from reports.build import _matrix, build
    from reports.render import html

    browser, _, _, _ = page
    run, items = load_run(audit_runs["partial"])
    view = build(run, items, evaluate(run, Policy()), figures=False)
    base = [c for c in run["comparisons"] if c["group_key"] == "all"]
    wide = copy.deepcopy(run)
    wide["comparisons"] = base + [dict(copy.deepcopy(c), group_key="subgroup", group=f"a rather long group name {i:02d}")
                                  for i in range(24) for c in base]
    view["matrix"] = _matrix(wide, view["students"])
    assert all(len(p["rows"]) == 25 for p in view["matrix"])
    (tmp_path / "wide.html").write_text(html(view), encoding="utf-8")
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        browser.send("Page.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.send("Page.navigate", {"url": (tmp_path / "wide.html").as_uri()}, session=session)
        time.sleep(1.0)
        matrix = _eval(browser, session, FIT % "#matrix .scroll")
        assert len(matrix) == 2 and all(sw <= cw for sw, cw in matrix), matrix
        _eval(browser, session, "document.querySelector('#matrix').scrollIntoView(); 0")
        png = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
        (_artefacts(tmp_path) / "report_1280x800_matrix_25_groups.png").write_bytes(png)
    finally:
        browser.send("Target.closeTarget", {"targetId": target})


def test_readable_at_200_percent_zoom_and_prints(page):
    browser, session, _, _ = page
    # 200% zoom of a 1280 px window = a 640 CSS px viewport; the page itself must not scroll sideways
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": 640, "height": 900, "deviceScaleFactor": 2, "mobile": False}, session=session)
    try:
        wide = _eval(browser, session, "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert wide <= 0
    finally:
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
    pdf = base64.b64decode(browser.send("Page.printToPDF", {}, session=session, timeout=60)["data"])
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000


def test_details_collapsed_by_default_with_content_warning(page):
    browser, session, _, _ = page
    n_details, n_open = _eval(browser, session, "[document.querySelectorAll('details').length,"
                                                " document.querySelectorAll('details[open]').length]")
    assert n_details >= 4 and n_open == 0
    warned = _eval(browser, session, "[...document.querySelectorAll('details')].filter(d => d.querySelector("
                                     "'.untrusted')).every(d => d.querySelector('.warning'))")
    assert warned is True
