"""Safe by default: no debug pages, no known or empty secret key, no process that starts broken."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

FIX = "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"


def project_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The project's own settings (not the tests'), as a person's shell would run them."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "BUS_TEST", "EDGE_TEST")) and not name.endswith("DATABASE_URL")
    }
    env.pop("REDIS_URL", None)
    return {**env, "DJANGO_SETTINGS_MODULE": "project.settings", "DJANGO_DATA_DIR": str(data_dir), **extra}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def setting(name: str, env: dict[str, str]) -> str:
    code = f"import django; django.setup(); from django.conf import settings; print(settings.{name})"
    result = run([sys.executable, "-c", code], env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_debug_is_off_unless_turned_on(tmp_path: Path) -> None:
    assert setting("DEBUG", project_env(tmp_path)) == "False"
    assert setting("DEBUG", project_env(tmp_path, DJANGO_DEBUG="1")) == "True"
    assert setting("DEBUG", project_env(tmp_path, DJANGO_DEBUG="true")) == "False", "only 1 turns it on"


def test_the_one_process_demo_makes_its_own_key_and_keeps_it(tmp_path: Path) -> None:
    first = setting("SECRET_KEY", project_env(tmp_path))
    assert len(first) >= 50 and first == setting("SECRET_KEY", project_env(tmp_path))
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert setting("SECRET_KEY", project_env(tmp_path / "other")) != first


@pytest.mark.parametrize(
    "command",
    [["manage.py", "runworker", "inventory"], ["manage.py", "up"], ["manage.py", "migrate_all"]],
    ids=["runworker", "up", "migrate_all"],
)
def test_distributed_processes_refuse_to_start_without_a_key(tmp_path: Path, command: list[str]) -> None:
    env = project_env(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    result = run([sys.executable, *command], env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr and FIX in result.stderr, result.stderr
    assert not (tmp_path / "secret_key").exists()


def test_daphne_refuses_to_load_the_application_without_a_key(tmp_path: Path) -> None:
    env = project_env(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    result = run([sys.executable, "-c", "import project.asgi"], env)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is not set" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("key", ["dev-only-insecure-key", "change-me-in-production", "django-insecure-abc"])
def test_published_keys_are_refused_everywhere(tmp_path: Path, key: str) -> None:
    env = project_env(tmp_path, DJANGO_SECRET_KEY=key)
    result = run([sys.executable, "manage.py", "migrate_all"], env)
    assert result.returncode != 0 and "published value" in result.stderr, result.stderr
    result = run([sys.executable, "-c", "import project.asgi"], env)
    assert result.returncode != 0 and "published value" in result.stderr, result.stderr[-2000:]


def test_check_deploy_passes_with_the_compose_files_environment(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = {
        name: str(value) for name, value in compose["x-image"]["environment"].items() if "$" not in str(value)
    }
    assert "DJANGO_SECRET_KEY" not in environment, "the compose file must not carry a secret"
    env = project_env(tmp_path, **environment, DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    result = run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout, result.stdout
