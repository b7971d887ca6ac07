"""The Kubernetes manifests in deploy/kubernetes/, checked without a cluster.

A manifest that sets an ``AIOTUSD_*`` variable aiotusd does not know, or a value it cannot
parse, makes every pod exit at start with status 2; one whose probes miss the port, or
whose grace period is shorter than a clean stop, fails only in production. So each
container's environment is assembled as Kubernetes would (literal values, ConfigMaps of
the same file, and the service links it injects unless ``enableServiceLinks`` is false)
and loaded with the server's own :func:`~server.config.load_settings`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from server.config import (
    ENV_PREFIX,
    ConfigError,
    Settings,
    load_settings,
    unknown_variables,
)
from server.database import postgres_url

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
POSTGRES_S3 = MANIFESTS / "aiotusd-postgres-s3.yaml"
SQLITE = MANIFESTS / "aiotusd-sqlite.yaml"
DATA_DIR = "/data"
"""The data_dir the image's entrypoint sets (``--data-dir /data``)."""
WORKLOADS = ("Deployment", "StatefulSet")

Document = dict[str, Any]


def documents(path: Path) -> list[Document]:
    with path.open(encoding="utf-8") as file:
        return [document for document in yaml.safe_load_all(file) if document is not None]


def of_kind(docs: list[Document], kind: str) -> list[Document]:
    return [document for document in docs if document["kind"] == kind]


def workload(docs: list[Document]) -> Document:
    (found,) = [document for document in docs if document["kind"] in WORKLOADS]
    return found


def service_links(docs: list[Document]) -> dict[str, str]:
    """The variables Kubernetes injects for the file's Services (docker-link style)."""
    links = {}
    for service in of_kind(docs, "Service"):
        name = service["metadata"]["name"].upper().replace("-", "_")
        ports = service["spec"]["ports"]
        address = f"tcp://10.96.0.10:{ports[0]['port']}"
        links[f"{name}_SERVICE_HOST"] = "10.96.0.10"
        links[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        links[f"{name}_PORT"] = address
        for port in ports:
            prefix = f"{name}_PORT_{port['port']}_TCP"
            links.update({prefix: address, f"{prefix}_PROTO": "tcp",
                          f"{prefix}_PORT": str(port["port"]), f"{prefix}_ADDR": "10.96.0.10"})
    return links


def environment(docs: list[Document], pod: Document, container: Document) -> dict[str, str]:
    """The container's variables whose values the file gives; those from Secrets map to
    ``<secret>``. ``envFrom`` a Secret is refused: its names could not be checked."""
    config_maps = {item["metadata"]["name"]: item["data"] for item in of_kind(docs, "ConfigMap")}
    env = {} if pod.get("enableServiceLinks") is False else service_links(docs)
    for source in container.get("envFrom", []):
        assert "secretRef" not in source, "envFrom a Secret: its names cannot be checked"
        env.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "configMapKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["configMapKeyRef"]
            env[variable["name"]] = config_maps[ref["name"]][ref["key"]]
        else:
            env[variable["name"]] = "<secret>"
    return env


def containers(docs: list[Document]) -> list[tuple[Document, Document]]:
    pod = workload(docs)["spec"]["template"]["spec"]
    return [(pod, container) for container in pod["containers"]]


def settings_of(docs: list[Document]) -> Settings:
    """The settings of the (single) aiotusd container, loaded as the server loads them;
    a variable the server would warn about as no setting fails the check too."""
    (env,) = [environment(docs, pod, container) for pod, container in containers(docs)]
    warnings = unknown_variables(env)
    if warnings:
        raise ConfigError("; ".join(warnings))
    return load_settings(environ=env)


def container_port(container: Document, port: int | str) -> int:
    """A probe's or a Service's port: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    (number,) = [item["containerPort"] for item in container["ports"] if item["name"] == port]
    return int(number)


def pre_stop_seconds(container: Document) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    return float(command[1]) if command and command[0] == "sleep" else 0.0


@pytest.fixture(params=[POSTGRES_S3, SQLITE], ids=lambda path: path.name)
def docs(request: pytest.FixtureRequest) -> list[Document]:
    return documents(request.param)


def test_the_manifests_are_the_two_the_docs_name():
    assert sorted(path.name for path in MANIFESTS.glob("*.yaml")) == [
        POSTGRES_S3.name, SQLITE.name]


def test_every_document_parses_and_has_a_kind_and_a_name(docs):
    for document in docs:
        assert document["apiVersion"] and document["kind"] and document["metadata"]["name"]


def test_every_aiotusd_variable_loads_as_a_setting(docs):
    settings = settings_of(docs)
    assert settings.server.shutdown_timeout > 0
    for pod, container in containers(docs):
        env = environment(docs, pod, container)
        assert any(name.startswith(ENV_PREFIX) for name in env)


def test_an_unknown_variable_in_a_manifest_fails_the_check(docs):
    broken = copy.deepcopy(docs)
    container = workload(broken)["spec"]["template"]["spec"]["containers"][0]
    container.setdefault("env", []).append({"name": "AIOTUSD_NO_SUCH_SETTING", "value": "1"})
    with pytest.raises(ConfigError, match="AIOTUSD_NO_SUCH_SETTING"):
        settings_of(broken)


def test_service_links_are_off_and_would_change_nothing(docs):
    """The Service named aiotusd makes Kubernetes inject AIOTUSD_PORT=tcp://... and the
    like: aiotusd ignores them without a warning, but the manifests leave them out."""
    assert workload(docs)["spec"]["template"]["spec"]["enableServiceLinks"] is False
    linked = copy.deepcopy(docs)
    del workload(linked)["spec"]["template"]["spec"]["enableServiceLinks"]
    ((pod, container),) = containers(linked)
    assert any(name.endswith("_SERVICE_HOST") for name in environment(linked, pod, container))
    assert settings_of(linked) == settings_of(docs)


def test_probes_ask_healthz_and_readyz_on_the_port_aiotusd_listens_on(docs):
    port = settings_of(docs).server.port
    for _, container in containers(docs):
        assert [item["containerPort"] for item in container["ports"]] == [port]
        readiness = container["readinessProbe"]["httpGet"]
        liveness = container["livenessProbe"]["httpGet"]
        assert readiness["path"] == "/readyz"
        assert liveness["path"] == "/healthz"
        assert container_port(container, readiness["port"]) == port
        assert container_port(container, liveness["port"]) == port


def test_the_service_reaches_the_pods_on_their_port(docs):
    port = settings_of(docs).server.port
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    ((_, container),) = containers(docs)
    (service,) = of_kind(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    for item in service["spec"]["ports"]:
        assert container_port(container, item["targetPort"]) == port


def test_the_grace_period_outlasts_a_clean_stop(docs):
    """Requests get shutdown_timeout, hook deliveries hooks_timeout to end; a pod killed
    sooner cuts uploads that would have finished."""
    settings = settings_of(docs)
    pod = workload(docs)["spec"]["template"]["spec"]
    for _, container in containers(docs):
        needed = (pre_stop_seconds(container) + settings.server.shutdown_timeout
                  + settings.hooks.timeout)
        assert pod["terminationGracePeriodSeconds"] > needed


def test_data_dir_is_a_volume_where_the_image_puts_it(docs):
    assert f'"--data-dir", "{DATA_DIR}"' in (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for _, container in containers(docs):
        assert DATA_DIR in [mount["mountPath"] for mount in container["volumeMounts"]]


def test_the_deployment_shares_postgresql_and_s3_with_secrets_outside_the_file():
    docs = documents(POSTGRES_S3)
    settings = settings_of(docs)
    url = postgres_url(settings)
    assert url is not None and urlsplit(url).password is None
    assert settings.storage.backend == "s3" and settings.s3.bucket
    ((pod, container),) = containers(docs)
    env = environment(docs, pod, container)
    for name in ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name] == "<secret>"
    assert of_kind(docs, "Secret") == []
    deployment = workload(docs)
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 3
    (budget,) = of_kind(docs, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


def test_the_sqlite_statefulset_runs_one_replica_on_its_own_volume():
    docs = documents(SQLITE)
    settings = settings_of(docs)
    assert postgres_url(settings) is None
    statefulset = workload(docs)
    assert statefulset["kind"] == "StatefulSet" and statefulset["spec"]["replicas"] == 1
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    ((_, container),) = containers(docs)
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == DATA_DIR
