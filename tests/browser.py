"""Headless Chromium for the tests that look at a page as a person would (no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str:
    """The browser's path; skips the test where there is none (fails in CI, which installs one)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("no chromium here (`apt-get install chromium` to run this check)")
    return browser


def rendered_dom(page: Path, profile: Path, *extra: str) -> str:
    """The DOM of a local page after headless Chromium rendered it, every request off the machine
    sent to a closed port."""
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            f"--user-data-dir={profile}",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            *extra,
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "</html>" in result.stdout, result.stderr[-2000:]
    return result.stdout
