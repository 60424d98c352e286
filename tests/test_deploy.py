"""The compose file stays valid and runs the processes the README runs by hand."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT


def test_compose_file_is_valid() -> None:
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: .ci/run installs Debian's docker-compose package.")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_the_readme_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    readme = (ROOT / "README.md").read_text()
    for name, service in compose["services"].items():
        command = service.get("command")
        if command and command[0] in ("python", "daphne"):
            text = " ".join(command[1:] if command[0] == "python" else command)
            assert text.split(" --bind")[0] in readme, f"the README does not show how to run {name}: {text}"
