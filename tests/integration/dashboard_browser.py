"""The dashboard in a real headless browser: Debian's chromium driven by selenium through the
system chromedriver (no browser download). Used by tests/integration/test_dashboard.py and by
`make screenshot` (``python -m tests.integration.dashboard_browser``), which runs the same flow
against the running demo.

``stack/ensure-chromium.sh`` installs chromium, chromium-driver and selenium when missing.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENSURE = ROOT / "stack" / "ensure-chromium.sh"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DEFAULT_OUT = ROOT / ".stack" / "screenshots" / "dashboard.png"


class BrowserUnavailable(RuntimeError):
    pass


def ensure_browser() -> None:
    """chromium + chromium-driver + selenium, installed when missing; clear error otherwise."""
    result = subprocess.run([str(ENSURE)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise BrowserUnavailable(
            "headless Chromium is not available and could not be installed "
            f"({ENSURE.relative_to(ROOT)}): {result.stderr.strip() or result.stdout.strip()}")


@dataclass
class PageReport:
    url: str
    operations: int = 0
    console: list[dict[str, Any]] = field(default_factory=list)
    screenshot: Path | None = None
    status_text: str = ""
    text: str = ""

    @property
    def console_errors(self) -> list[dict[str, Any]]:
        return [entry for entry in self.console if entry.get("level") == "SEVERE"]


def chromium(width: int = 1440, height: int = 1200) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="trovemeter-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--window-size={width},{height}",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver._trovemeter_profile = profile  # removed in close()
    return driver


def close(driver: Any) -> None:
    profile = getattr(driver, "_trovemeter_profile", None)
    try:
        driver.quit()
    finally:
        if profile:
            shutil.rmtree(profile, ignore_errors=True)


def capture(url: str, out: Path | None, *, min_operations: int = 1, timeout: float = 60.0,
            settle: float = 2.0) -> PageReport:
    """Load ``url``, wait until the page shows at least ``min_operations`` operations (the
    page puts the count on ``body[data-operations]``), let a few polls render, collect the
    console and save a full-page screenshot to ``out``."""
    report = PageReport(url)
    driver = chromium()
    try:
        driver.get(url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = driver.execute_script("return document.body.dataset.operations || null")
            if shown is not None and int(shown) >= min_operations:
                report.operations = int(shown)
                break
            time.sleep(0.25)
        time.sleep(settle)  # a poll or two more: the chart and tables of the latest data
        shown = driver.execute_script("return document.body.dataset.operations || '0'")
        report.operations = int(shown)
        report.status_text = driver.execute_script(
            "return document.getElementById('status-text').textContent")
        report.text = driver.execute_script("return document.body.innerText")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(full_page_png(driver))
            report.screenshot = out
        report.console = driver.get_log("browser")
        return report
    finally:
        close(driver)


def full_page_png(driver: Any) -> bytes:
    """The whole page, not just the window (Chrome DevTools' captureBeyondViewport)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000),
                 "scale": 1}})
    return base64.b64decode(shot["data"])


def _demo_url() -> str:
    try:
        return json.loads((ROOT / ".stack" / "run" / "demo.json").read_text())["dashboard"]
    except (OSError, ValueError, KeyError):
        return "http://127.0.0.1:6066/dashboard/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="screenshot of the running demo's dashboard")
    parser.add_argument("--url", default=None, help="default: the last demo's dashboard")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--min-operations", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    url = args.url or _demo_url()
    try:
        report = capture(url, args.out, min_operations=args.min_operations, timeout=args.timeout)
    except Exception as exc:  # noqa: BLE001 - one line for the person at the terminal
        print(f"screenshot: {url}: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        print("screenshot: is the demo running? (make demo)", file=sys.stderr)
        return 1
    print(f"screenshot: {report.screenshot} ({url}: {report.operations} operations, "
          f"{len(report.console_errors)} console errors; {report.status_text})")
    for entry in report.console_errors:
        print(f"  console: {entry.get('message')}", file=sys.stderr)
    if report.operations < args.min_operations:
        print("screenshot: the page shows no operation yet", file=sys.stderr)
        return 1
    return 1 if report.console_errors else 0


if __name__ == "__main__":
    sys.exit(main())
