"""deploy/k8s validated offline (issue 17): every resource against the Kubernetes API schema
(kubernetes-validate, strict: unknown fields are errors), the daemon's config in its
ConfigMap through the daemon's own loader, HAProxy's config through ``haproxy -c``, and the
relations between them that a schema cannot see (grace above drain_grace, probes on the
right paths, Guaranteed resources). No cluster, no network."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from alfred_daemon.ops.config import load

from ..conftest import REPO

K8S = REPO / "deploy" / "k8s"
KUBE_VERSION = "1.30.0"


def documents(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    assert docs, f"{name} has no resources"
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


@pytest.mark.parametrize("name", ["alfred-daemon.yaml", "haproxy.yaml"])
def test_every_resource_validates_against_the_api_schema(name: str) -> None:
    kinds = []
    for doc in documents(name):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        kinds.append(doc["kind"])
    expected = {"alfred-daemon.yaml": ["ConfigMap", "Deployment", "Service",
                                       "PodDisruptionBudget"],
                "haproxy.yaml": ["ConfigMap", "Deployment", "Service"]}[name]
    assert kinds == expected


def test_the_validator_rejects_a_misspelt_field() -> None:
    """The check above would catch a mistake: strict mode refuses an unknown key."""
    deployment = copy.deepcopy(by_kind(documents("alfred-daemon.yaml"), "Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_the_daemon_config_loads_and_the_pod_spec_fits_it(tmp_path: Path) -> None:
    docs = documents("alfred-daemon.yaml")
    toml = tmp_path / "alfred.toml"
    toml.write_text(by_kind(docs, "ConfigMap")["data"]["alfred.toml"])
    cfg = load(toml, environ={"ALFRED__RUNTIME__DAEMON_ID": "alfred-daemon-7d9f-x2k4q"})
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The kubelet's SIGKILL must come after the drain has had its whole grace.
    assert pod["terminationGracePeriodSeconds"] > cfg.runtime.drain_grace + 10
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "/drain" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(cfg.grpc.listen.rsplit(":", 1)[1]), "http": cfg.http.port,
                     "agent": cfg.http.agent_check_port}
    # Guaranteed QoS with whole CPUs (static CPU manager pinning), one worker per CPU.
    res = container["resources"]
    assert res["requests"] == res["limits"]
    assert int(res["requests"]["cpu"]) == cfg.runtime.workers.count
    env = {e["name"]: e for e in container["env"]}
    assert env["ALFRED__RUNTIME__DAEMON_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.name"
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_the_ingress_haproxy_config_is_valid(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if haproxy is None:
        pytest.fail("haproxy is not installed: make setup apt-installs it")
    text = by_kind(documents("haproxy.yaml"), "ConfigMap")["data"]["haproxy.cfg"]
    for rule in ("balance leastconn", "option httpchk GET /readyz", "agent-check",
                 "agent-port 8016", "stick match req.hdr(alfred-daemon-id)", "proto h2"):
        assert rule in text, rule
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    done = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
