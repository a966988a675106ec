"""The status page in a real browser: headless Chromium against `watti-watchman demo`."""

import asyncio
import re
import sys
import tempfile

from tests.support.tools import require_tool
from watti_watchman.broker import free_port

CHARTS = ("c-grid", "c-battery", "c-limits", "c-soc")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1000",
)


async def test_demo_status_page_renders_and_updates_charts() -> None:
    chromium = require_tool("chromium")
    port = free_port()
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watti_watchman.cli",
        "demo",
        "--duration",
        "60",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert demo.stdout is not None
        banner = await asyncio.wait_for(demo.stdout.readline(), 20)
        assert banner.startswith(b"WattiWatchman demo")
        status_line = await asyncio.wait_for(demo.stdout.readline(), 5)
        assert f"http://127.0.0.1:{port}/".encode() in status_line
        with tempfile.TemporaryDirectory(prefix="watti-chromium-") as profile:
            browser = await asyncio.create_subprocess_exec(
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=6000",
                "--dump-dom",
                f"http://127.0.0.1:{port}/",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            dom_bytes, _ = await asyncio.wait_for(browser.communicate(), 60)
        dom = dom_bytes.decode()
    finally:
        demo.terminate()
        await asyncio.wait_for(demo.wait(), 15)
    updates = re.search(r'<body data-updates="(\d+)"', dom)
    assert updates is not None, dom[:500]
    assert int(updates.group(1)) >= 5
    for chart in CHARTS:
        found = re.search(rf'<canvas id="{chart}"[^>]*data-points="(\d+)"[^>]*data-inked="(\d+)"', dom)
        assert found is not None, f"{chart} never drew"
        assert int(found.group(1)) >= 5
        assert int(found.group(2)) > 50
    assert re.search(r'id="reason">[a-z_]+<', dom)
    assert "fresh" in dom
