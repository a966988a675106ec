"""The command line as a user runs it: `read-meter` against a real Modbus server, exit codes."""

import asyncio
import sys
from pathlib import Path

from watti_watchman.cli import run_loop
from watti_watchman.sim.janitza_server import JanitzaServer

CONFIG = """
meters:
  - type: Janitza
    name: hak
    host: 127.0.0.1
    port: {port}
    unit: 1
    timeout: 0.5
"""


async def watti(*args: str) -> tuple[int, str, str]:
    """Run `watti-watchman ARGS` as a process; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watti_watchman.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_read_meter_prints_one_reading_and_explains_failures(
    janitza_server: JanitzaServer, tmp_path: Path
) -> None:
    config = tmp_path / "watti_watchman.yml"
    config.write_text(CONFIG.format(port=janitza_server.port))
    code, out, _ = await watti("read-meter", "hak", "-c", str(config))
    assert code == 0
    assert "1934.2 W" in out
    code, _, err = await watti("read-meter", "hakk", "-c", str(config))
    assert code == 2
    assert "no meter that can be read once named 'hakk' (known: hak)" in err
    await janitza_server.stop()
    code, _, err = await watti("read-meter", "hak", "-c", str(config))
    assert code == 1
    assert f"hak: cannot read 127.0.0.1:{janitza_server.port} unit 1" in err


def test_commands_run_on_uvloop() -> None:
    """`run`, `demo` and `read-meter` run their event loop on uvloop (≈12 % less CPU, § CPU)."""

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_loop(loop_module()).startswith("uvloop")
