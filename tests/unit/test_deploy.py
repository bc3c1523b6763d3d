"""deploy/ checked by the real tools (systemd-analyze, the Kubernetes schemas, promtool, hadolint)
and against the daemon: every flag a file passes is a valid `metastore serve` option."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from metastore_core.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
DEFAULTS = Config()


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed: tests/run.sh installs it")
    return exe


def serve_flags(args: list[str]) -> dict[str, str]:
    """`--flag=value` / `--flag value` pairs of a serve command line, as load_config takes them."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        flag = args[i].removeprefix("--")
        if "=" in flag:
            flag, value = flag.split("=", 1)
        else:
            i += 1
            value = args[i]
        out[flag.replace("-", "_")] = value
        i += 1
    return out


# ---------------------------------------------------------------------- systemd
def unit() -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / "metastore.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            keys[key] = value
    return keys


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants ExecStart's program and the man pages of Documentation= to exist here
    text = (DEPLOY / "systemd" / "metastore.service").read_text()
    installed = shutil.which("metastore") or pytest.fail("the metastore command is not installed")
    (tmp_path / "metastore.service").write_text(text.replace("/usr/local/bin/metastore", installed))
    (tmp_path / "man").mkdir()
    (tmp_path / "man" / "man1").symlink_to(ROOT / "man")
    r = subprocess.run(
        [tool("systemd-analyze"), "verify", str(tmp_path / "metastore.service")],
        capture_output=True,
        text=True,
        env={**os.environ, "MANPATH": str(tmp_path / "man"), "SYSTEMD_LOG_LEVEL": "notice"},
        timeout=60,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr  # unknown keys are only warnings


def test_systemd_unit_fits_the_daemon() -> None:
    keys = unit()
    assert keys["Type"] == "notify"  # the daemon sends READY=1 (server/systemd.py)
    assert int(keys["TimeoutStopSec"].removesuffix("s")) > DEFAULTS.shutdown_timeout_s + 4 * 2
    assert int(keys["LimitNOFILE"]) > DEFAULTS.max_connections + 1024
    assert keys["WatchdogSec"] and keys["StateDirectory"] == "metastore"
    command = keys["ExecStart"].split()
    assert command[1] == "serve"
    flags = serve_flags(command[2:])
    flags["data_dir"] = "/var/lib/metastore"  # ${STATE_DIRECTORY}, filled in by systemd
    load_config(None, flags, env={})


# ---------------------------------------------------------------------- Kubernetes
def manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "metastore.yaml").read_text()) if d]


@pytest.mark.parametrize("version", ["1.25.0", "1.37.0"])  # the oldest and newest schemas bundled
def test_kubernetes_manifests_match_the_schemas(version: str) -> None:
    kinds = []
    for doc in manifests():
        kinds.append(doc["kind"])
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in Kubernetes itself; checked against the Service below
        kubernetes_validate.validate(doc, version, strict=True)
    assert kinds == ["Service", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor"]


def test_kubernetes_manifests_fit_together_and_fit_the_daemon() -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in manifests():
        by_kind.setdefault(doc["kind"], []).append(doc)
    (sts,) = by_kind["StatefulSet"]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    headless, client = by_kind["Service"]
    assert (
        headless["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == headless["metadata"]["name"]
    )
    for selector in (
        headless["spec"]["selector"],
        client["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"],
        by_kind["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == ports["client"]  # native gRPC health probes
    # the grace period covers the preStop pause and a whole graceful stop
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pause + DEFAULTS.shutdown_timeout_s
    # --max-memory below the container's memory limit: writes are refused before the OOM killer
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    assert int(env["METASTORE_MAX_MEMORY"]) < 4 << 30
    assert container["resources"]["limits"]["memory"] == "4Gi"
    args = [
        a.replace("$(POD_NAME)", "metastore-0").replace("$(POD_NAMESPACE)", "default")
        for a in container["args"]
    ]
    assert args[0] == "serve"
    config = load_config(None, serve_flags(args[1:]), env={k: v for k, v in env.items() if v})
    assert config.listen_client_urls == [f"http://0.0.0.0:{ports['client']}"]
    assert config.listen_metrics_urls == [f"http://0.0.0.0:{ports['metrics']}"]
    # Prometheus scrapes a named port of a Service its selector picks
    (monitor,) = by_kind["ServiceMonitor"]
    picked = [
        s
        for s in (headless, client)
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    scraped = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert scraped <= {p["name"] for s in picked for p in s["spec"]["ports"]} and scraped == {"metrics"}


# ---------------------------------------------------------------------- Prometheus
def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [promtool, "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")],
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"HighPanicRate", "MemoryUsageHigh", "ConnectionLimitReached"} <= alerts  # spec §6
    tested = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    assert {t["alert_rule_test"][0]["alertname"] for t in tested["tests"]} == alerts


# ---------------------------------------------------------------------- the container image
def test_containerfile_passes_hadolint_and_fits_the_daemon() -> None:
    path = DEPLOY / "Containerfile"
    r = subprocess.run([tool("hadolint"), str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = path.read_text().replace("\\\n", " ")
    assert re.search(r"^USER 10001:10001$", text, re.M)  # not root; the uid the StatefulSet runs as
    assert re.search(r'^VOLUME \["/var/lib/metastore"\]$', text, re.M)
    assert re.search(r"^HEALTHCHECK .* CMD \[\"metastore\", \"health\"", text, re.M)
    cmd = yaml.safe_load(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    config = load_config(None, serve_flags(cmd[1:]), env={})
    exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split()}  # type: ignore[union-attr]
    assert {
        int(u.rsplit(":", 1)[1]) for u in config.listen_client_urls + config.listen_metrics_urls
    } == exposed
