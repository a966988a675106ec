"""`watti-watchman run` as a real process against the simulated site (tests and benchmarks)."""

import asyncio
import contextlib
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from watti_watchman.broker import free_port
from watti_watchman.sim.demo import SimulatedSite, demo_config_text


@dataclass
class ServiceProcess:
    """A running `watti-watchman run`: its process, HTTP port and combined log file."""

    process: asyncio.subprocess.Process
    http_port: int
    log_path: Path

    async def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, wait for the orderly shutdown (kill after `timeout_s`); the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        assert self.process.returncode is not None
        return self.process.returncode

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def service_process(site: SimulatedSite, *, nofile: int | None = None) -> AsyncIterator[ServiceProcess]:
    """`watti-watchman run` on the demo configuration against `site`; stopped on exit.

    `nofile` sets the process's descriptor limit (RLIMIT_NOFILE, soft and hard), as systemd would.
    """

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    http_port = free_port()
    with TemporaryDirectory(prefix="watti-run-") as folder:
        config = Path(folder) / "watti_watchman.yml"
        config.write_text(demo_config_text().replace("port: 9292", f"port: {http_port}"))
        log_path = Path(folder) / "service.log"
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "watti_watchman.cli",
                "run",
                "-c",
                str(config),
                env={**os.environ, **site.environment()},
                stdout=log_file,
                stderr=log_file,
                preexec_fn=limit,
            )
        service = ServiceProcess(process, http_port, log_path)
        try:
            yield service
        finally:
            await service.stop()
