"""External command-line tools some tests need (promtool, chromium)."""

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """Path of `name`; CI (WATTI_REQUIRE_TOOLS=1) fails without it, elsewhere the test is skipped."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (bash .ci/run installs it)"
    if os.environ.get("WATTI_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)
