"""The deploy recipe (``deploy/``) against the code, without Docker: every process the compose file runs is
a command of the CLI, every ``BILLING_*`` variable it sets is a setting (and together they validate), the
health checks probe the ports the settings open, and the image's entry point is the package's console
script."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.cli import build_parser
from billing.cli_errors import SHUTDOWN_GRACE_S
from billing.settings import _FIELDS, PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
BILLING_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image") == "billing:latest"}
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()


def resolved(value: str) -> str:
    """A compose value with its ``${VAR:-default}`` / ``${VAR:?message}`` substitutions filled in."""

    def fill(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if op == ":-":
            return rest
        return "s" * 40 if name == "BILLING_JWT_SECRET" else "x"

    return re.sub(r"\$\{([A-Z_]+)(:-|:\?)?([^}]*)\}", fill, value)


def test_the_recipe_runs_every_process_of_the_issue_with_its_replicas() -> None:
    commands = {name: s["command"] for name, s in BILLING_SERVICES.items()}
    assert commands == {
        "migrate": ["migrate"],
        "api": ["api"],
        "projections": ["projections"],
        "relay": ["relay"],
        "worker": ["worker"],
        "hooks": ["hooks"],
    }
    replicas = {name: s.get("deploy", {}).get("replicas", 1) for name, s in BILLING_SERVICES.items()}
    assert commands["hooks"] == ["hooks"]
    assert replicas == {"migrate": 1, "api": 2, "projections": 1, "relay": 1, "worker": 2, "hooks": 1}
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    assert SERVICES["rabbitmq"]["image"].startswith("rabbitmq:")
    assert SERVICES["migrate"]["restart"] == "no"


@pytest.mark.parametrize("service", sorted(BILLING_SERVICES))
def test_every_command_of_the_recipe_exists_in_the_cli(service: str) -> None:
    args = build_parser().parse_args(BILLING_SERVICES[service]["command"])
    handler = args.handler
    assert handler.__name__ == f"cmd_{service}"


def test_every_billing_variable_of_the_recipe_is_a_setting_and_they_validate() -> None:
    env = {k: resolved(str(v)) for k, v in COMPOSE["x-billing-env"].items()}
    known = {PREFIX + name.upper() for name in _FIELDS}
    assert set(env) <= known, sorted(set(env) - known)
    assert {"BILLING_DATABASE_URL", "BILLING_AMQP_URL", "BILLING_JWT_SECRET"} <= set(env)
    assert "BILLING_CLOCK" not in env  # tests and demos only
    settings = Settings.from_env(env)
    assert (settings.api_host, settings.api_port) == ("0.0.0.0", 8000)
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9100)
    assert settings.database_url.startswith("postgresql://billing:billing@postgres:5432/billing")
    assert settings.amqp_url == "amqp://billing:billing@rabbitmq:5672/"
    assert settings.redis_url == "redis://redis:6379/0"  # two api replicas share the rate-limit counts
    assert SERVICES["redis"]["image"].startswith("redis:")
    for service in BILLING_SERVICES.values():
        assert service["environment"] == COMPOSE["x-billing-env"]  # one block for every process


def test_health_checks_probe_the_ports_the_settings_open() -> None:
    env = {k: resolved(str(v)) for k, v in COMPOSE["x-billing-env"].items()}
    settings = Settings.from_env(env)
    api = " ".join(SERVICES["api"]["healthcheck"]["test"])
    assert f"127.0.0.1:{settings.api_port}/health/ready" in api
    for name in ("projections", "relay", "worker", "hooks"):
        probe = " ".join(SERVICES[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{settings.metrics_port}/metrics" in probe
    assert "healthcheck" in SERVICES["postgres"] and "healthcheck" in SERVICES["rabbitmq"]
    assert SERVICES["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_grace_period_outlasts_the_processes_own_shutdown() -> None:
    for service in BILLING_SERVICES.values():
        assert service["stop_signal"] == "SIGTERM"
        assert float(service["stop_grace_period"].rstrip("s")) > SHUTDOWN_GRACE_S


def test_the_images_entry_point_is_the_packages_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"billing": "billing.cli:main"}
    assert 'ENTRYPOINT ["billing"]' in DOCKERFILE
    assert "STOPSIGNAL SIGTERM" in DOCKERFILE
    for build in (s["build"] for s in BILLING_SERVICES.values()):
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile")
    # what the image copies from the repository exists; the DDL ships inside the package (src/)
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.MULTILINE):
        for source in sources.split():
            assert (ROOT / source).exists(), source
    assert (ROOT / "src" / "billing" / "sql" / "001_views.sql").exists()
    # the dashboard's vendor files the image copies are the ones scripts/assets copies
    assets = (ROOT / "scripts" / "assets").read_text()
    for vendored in ("htmx.org/dist/htmx.min.js", "@picocss/pico/css/pico.min.css", "swagger-ui-dist"):
        assert vendored in assets and vendored in DOCKERFILE
    for swagger in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        assert swagger in assets and swagger in DOCKERFILE


def test_the_readme_says_how_to_start_it() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "docker compose -f deploy/compose.yaml up -d --build" in readme
    assert "BILLING_JWT_SECRET" in readme


def test_the_readmes_list_every_service_and_process_of_the_recipe() -> None:
    readme = (DEPLOY / "README.md").read_text()
    table = {m.group(1) for m in re.finditer(r"^\| `([a-z-]+)` \|", readme, re.MULTILINE)}
    assert table == set(SERVICES)
    for needed in ("user create", "BILLING_OPERATOR_TOKEN", "BILLING_PUBLIC_URL"):
        assert needed in readme, needed
    operations = (ROOT / "docs" / "operations.md").read_text()
    processes = {m.group(1) for m in re.finditer(r"^\| `billing ([a-z-]+)` \|", operations, re.MULTILINE)}
    assert processes == {s["command"][0] for s in BILLING_SERVICES.values()}
