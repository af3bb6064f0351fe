"""The deployment files (Procfile, deploy/) parse, agree with each other and with the code: the
processes, the services of the compose file, the metric names in the alert rules and the Grafana
dashboard, the variables of .env.example. Fast: no database, no Docker."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import django_prometheus
import pytest
import yaml
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# Metrics of the exporters in the compose monitoring profile (postgres-exporter, redis-exporter) and
# Prometheus' own `up`; the app's names come from the code below.
EXPORTER_METRICS = {
    "up",
    "pg_up",
    "pg_settings_max_connections",
    "pg_stat_database_numbackends",
    "pg_stat_database_xact_commit",
    "pg_stat_database_xact_rollback",
    "pg_stat_database_deadlocks",
    "redis_up",
    "redis_key_size",
    "redis_connected_clients",
    "redis_memory_used_bytes",
}

PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "topk",
    "bottomk",
    "quantile",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "histogram_quantile",
    "abs",
    "absent",
    "clamp_min",
    "clamp_max",
    "vector",
    "scalar",
    "time",
    "min_over_time",
    "max_over_time",
    "avg_over_time",
    "inf",
    "nan",
}


def _load_yaml(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def _exposed_names(base: str, kind: str) -> set[str]:
    base = base.removesuffix("_total") if kind == "counter" else base
    return {
        "counter": {base, f"{base}_total"},
        "histogram": {base, f"{base}_bucket", f"{base}_sum", f"{base}_count"},
    }.get(kind, {base})


def _declared_metrics(path: Path, kinds: dict[str, str]) -> set[str]:
    """Names passed as the first argument to the metric constructors in a module's source."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        first = node.args[0]
        if func in kinds and isinstance(first, ast.Constant) and isinstance(first.value, str):
            names |= _exposed_names(first.value, kinds[func])
    return names


def _app_metrics() -> set[str]:
    """The metrics declared in billing_site/metrics.py and gateway/metrics.py, and the state gauges the apps
    register at start."""
    from billing_site import metrics

    kinds = {"Counter": "counter", "Histogram": "histogram", "Gauge": "gauge", "GaugeMetricFamily": "gauge"}
    declared = _declared_metrics(ROOT / "billing_site" / "metrics.py", kinds)
    return declared | _declared_metrics(ROOT / "gateway" / "metrics.py", kinds) | set(metrics._STATE_GAUGES)


def _django_prometheus_metrics() -> set[str]:
    """django-prometheus registers its metrics with string literals "django_…" (counters and
    histograms alike), so every spelling a counter or histogram can take is accepted."""
    names: set[str] = set()
    package = Path(django_prometheus.__file__).parent
    for source in package.rglob("*.py"):
        if "tests" in source.parts:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"django_[a-z_]+", node.value):
                names |= _exposed_names(node.value, "counter") | _exposed_names(node.value, "histogram")
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, grouping clauses, ranges,
    strings and functions removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\(?)", expr):
        word, call = match.groups()
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def test_metric_names_reads_only_metrics():
    expr = 'histogram_quantile(0.99, sum by (le, view) (rate(foo_bucket{status=~"5..", a="b"}[$__rate_interval]))) / ignoring(x) bar > 0.5 and on() up'
    assert metric_names(expr) == {"foo_bucket", "bar", "up"}


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    app = _app_metrics()
    assert {"tollgate_usage_events_total", "tollgate_debit_seconds_bucket", "tollgate_holds_active"} <= app
    django = _django_prometheus_metrics()
    assert "django_http_responses_total_by_status_total" in django
    return app | django


# --- Procfile -------------------------------------------------------------------------------------


def _procfile() -> dict[str, str]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            assert name not in processes, f"process {name} twice"
            processes[name.strip()] = command.strip()
    return processes


def test_procfile_runs_web_gateway_worker_beat_and_migrates_on_release():
    processes = _procfile()
    assert set(processes) == {"release", "web", "gateway", "worker", "beat"}
    assert processes["web"] == "gunicorn -c gunicorn.conf.py"
    assert processes["gateway"] == "gunicorn -c gunicorn_gateway.conf.py"
    assert processes["worker"].startswith("celery -A billing_site worker")
    assert processes["beat"].startswith("celery -A billing_site beat")
    assert "--schedule" in processes["beat"]
    assert processes["release"] == "python manage.py migrate --noinput"


# --- Dockerfile -----------------------------------------------------------------------------------


def _dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_is_slim_non_root_and_serves_gunicorn():
    text = _dockerfile()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert 'CMD ["gunicorn", "-c", "gunicorn.conf.py"]' in text
    assert "pip install -r requirements.txt" in text
    assert re.search(r"PROMETHEUS_MULTIPROC_DIR=\S+", text)


def test_dockerfile_collectstatic_never_starts_the_embedded_servers():
    """Without DATABASE_URL / REDIS_URL the settings start embedded PostgreSQL and Redis."""
    run = re.search(r"^RUN ((?:.*\\\n)*.*collectstatic.*)$", _dockerfile(), re.M)
    assert run, "no collectstatic step"
    for variable in ("DATABASE_URL=", "REDIS_URL=", "SECRET_KEY=", "TOLLGATE_ENV=production"):
        assert variable in run.group(1)


def test_dockerfile_copies_every_first_party_app():
    copied = set(re.findall(r"^COPY (\S+?)/? \S+/?$", _dockerfile(), re.M))
    local_apps = {app.split(".")[0] for app in settings.INSTALLED_APPS if (ROOT / app.split(".")[0]).is_dir()}
    assert local_apps, "no first-party apps found"
    missing = (local_apps | {"billing_site", "templates", "static"}) - copied
    assert not missing, f"deploy/Dockerfile does not COPY {sorted(missing)}"
    assert not copied & {".", ".data", ".venv"}, "the whole checkout (or its data) would enter the image"


# --- docker-compose.yml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load_yaml("docker-compose.yml")


def test_compose_defines_the_stack(compose):
    services = compose["services"]
    assert {"db", "redis", "migrate", "web", "worker", "beat"} <= set(services)
    assert services["db"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("migrate", "web", "worker", "beat"):
        build = services[name]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile" and build["context"] == ".."
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert services[name]["env_file"] == ".env"
        assert "profiles" not in services[name]


def test_compose_migrates_before_web_and_worker_start(compose):
    services = compose["services"]
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["db"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["db"] and "healthcheck" in services["redis"]


def test_compose_processes_match_the_procfile(compose):
    services, processes = compose["services"], _procfile()
    assert "command" not in services["web"], "web runs the image's CMD (gunicorn)"
    assert " ".join(services["worker"]["command"]).startswith(processes["worker"])
    assert " ".join(services["beat"]["command"]).startswith("celery -A billing_site beat --loglevel=INFO --schedule")
    assert "scale" not in services["beat"] and "deploy" not in services["beat"], "beat must run exactly once"


def test_compose_web_and_worker_share_the_metrics_folder(compose):
    """The worker's billing metrics reach web's /metrics only through one folder and one PID namespace."""
    folder = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", _dockerfile()).group(1)
    services = compose["services"]
    mounts = {name: {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]} for name in ("web", "worker")}
    assert mounts["web"][folder] == mounts["worker"][folder] == "metrics"
    assert services["worker"]["pid"] == "service:web"
    assert services["web"]["environment"]["TOLLGATE_KEEP_METRICS"] == "1"


def test_compose_monitoring_profile_mounts_existing_files(compose):
    monitoring = {name: s for name, s in compose["services"].items() if "monitoring" in s.get("profiles", [])}
    assert {"prometheus", "grafana"} <= set(monitoring)
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), f"{source} is mounted but missing"


# --- Prometheus -----------------------------------------------------------------------------------


def test_prometheus_config_scrapes_web_with_the_metrics_token():
    config = _load_yaml("prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (DEPLOY / rule_file).is_file()
    web = next(job for job in config["scrape_configs"] if job["job_name"] == "tollgate-web")
    assert web["metrics_path"] == "/metrics"
    assert web["static_configs"][0]["targets"] == ["web:8000"]
    assert web["authorization"]["type"] == "Bearer"


@pytest.fixture(scope="module")
def alert_rules() -> list[tuple[str, dict]]:
    groups = _load_yaml("prometheus-alerts.yml")["groups"]
    return [(group["name"], rule) for group in groups for rule in group["rules"]]


def test_alert_rules_are_complete(alert_rules):
    names = [rule["alert"] for _, rule in alert_rules]
    assert len(names) == len(set(names))
    for _, rule in alert_rules:
        assert rule["expr"].strip() and rule["for"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
    expressions = " ".join(rule["expr"] for _, rule in alert_rules)
    for needed in (
        "tollgate_settlement_tasks_total",
        "tollgate_reconciliation_mismatches",
        "tollgate_debit_seconds_bucket",
        "django_http_responses_total_by_status_total",
        "tollgate_holds_active",
        "tollgate_payments_pending",
        "tollgate_settlement_lag_seconds_bucket",
    ):
        assert needed in expressions, f"no alert reads {needed}"


def test_alert_rules_read_only_existing_metrics(alert_rules, known_metrics):
    for group, rule in alert_rules:
        allowed = EXPORTER_METRICS if group == "tollgate-infrastructure" else known_metrics | {"up"}
        unknown = metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule['alert']} reads unknown metrics {sorted(unknown)}"
        assert metric_names(rule["expr"]), f"{rule['alert']} reads no metric"


# --- Grafana --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def test_dashboard_uses_the_datasource_variable(dashboard):
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_dashboard_panel_queries_existing_metrics(dashboard, known_metrics):
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']}"
            unknown = names - known_metrics - EXPORTER_METRICS
            assert not unknown, f"panel {panel['title']!r} reads unknown metrics {sorted(unknown)}"
    queried = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needed in (
        "tollgate_usage_events_total",
        "tollgate_wallet_lock_seconds_bucket",
        "tollgate_revenue_total",
        "tollgate_recharges_total",
        "tollgate_payments_total",
        "tollgate_low_balance_alerts_total",
        "django_http_requests_latency_seconds_by_view_method_bucket",
    ):
        assert needed in queried, f"no panel shows {needed}"


# --- .env.example ---------------------------------------------------------------------------------


def _variables_read_by_the_code() -> set[str]:
    pattern = re.compile(r"""(?:\benv(?:\.\w+)?|environ\.get|environ\.setdefault)\(\s*["']([A-Z][A-Z0-9_]*)["']""")
    sources = [ROOT / "billing_site" / "settings.py", ROOT / "billing_site" / "embedded.py", ROOT / "gunicorn.conf.py"]
    return {name for source in sources for name in pattern.findall(source.read_text())}


def test_env_example_names_only_variables_that_are_read():
    entries = dict(
        line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines() if line and not line.startswith("#")
    )
    compose_text = (DEPLOY / "docker-compose.yml").read_text()
    read_by_compose = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text))
    unknown = set(entries) - _variables_read_by_the_code() - read_by_compose
    assert not unknown, f".env.example sets variables nothing reads: {sorted(unknown)}"
    assert entries["SECRET_KEY"] == "change-me"
    assert entries["STRIPE_SECRET_KEY"] == entries["STRIPE_WEBHOOK_SECRET"] == ""
    for required in (
        "DATABASE_URL",
        "REDIS_URL",
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "SITE_URL",
        "METRICS_TOKEN",
        "SANDBOX_WEBHOOK_SECRET",
        "GATEWAY_ENCRYPTION_KEYS",
    ):
        assert required in entries
    assert "sandbox" not in entries["PAYMENT_PROVIDERS"].split(","), "the sandbox provider moves no money"


def test_deploy_files_hold_no_machine_specific_paths():
    files = [ROOT / "Procfile", *sorted(p for p in DEPLOY.iterdir() if p.is_file()), ROOT / "docs" / "operations.md"]
    for path in files:
        text = path.read_text()
        for marker in ("/work/", "/home/", "/Users/", "/root/"):
            assert marker not in text, f"{path.name} names a machine path ({marker})"
