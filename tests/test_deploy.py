"""The deployment files, checked offline: the Kubernetes manifests build with kustomize and validate
against the Kubernetes schemas (kubernetes-validate ships them), their cross-references hold, and the
Dockerfile passes hadolint."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
# The oldest version the manifests support (the preStop `sleep` action is on by default from 1.30),
# and the newest whose schemas kubernetes-validate ships.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NOT_APPLIED = {"kustomization.yaml", "secret.example.yaml", "publish-job.example.yaml"}
# Read by uvicorn and the image's start command rather than by Settings.
OTHER_VARIABLES = {"WEB_CONCURRENCY", "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"}
# hadolint rules this project does not follow, and why.
HADOLINT_IGNORED = {
    # Pinning Debian package versions breaks the build whenever a security update replaces the pinned
    # version on the mirror; the image pins its base image and the torch wheel instead.
    "DL3008",
}


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(DEPLOY.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def resource(kind: str) -> dict[str, Any]:
    found = [doc for docs in manifests().values() for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    containers = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def venv_tool(name: str) -> str:
    """A binary that a dev dependency installs next to this interpreter (or anywhere on PATH)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e '.[dev]'` brings it"
    return found


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("filename", sorted(manifests()))
def test_manifest_validates_against_the_kubernetes_schemas(filename: str, version: str) -> None:
    for doc in manifests()[filename]:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_a_misspelt_field() -> None:
    """The control: strict validation rejects what a typo would otherwise silently drop."""
    deployment = copy.deepcopy(resource("Deployment"))
    pod = deployment["spec"]["template"]["spec"]["containers"][0]
    pod["readinesProbe"] = pod.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_to_apply() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(set(manifests()) - NOT_APPLIED)


def test_kustomize_builds_valid_resources_with_the_image_tag() -> None:
    built = subprocess.run(
        [venv_tool("kubectl"), "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    docs = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert sorted(doc["kind"] for doc in docs) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fashion-serve"
    (deployment,) = (doc for doc in docs if doc["kind"] == "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert re.fullmatch(r"fashion-serve:\d+\.\d+\.\d+", image), image


def test_selectors_names_and_ports_refer_to_each_other() -> None:
    deployment, service = resource("Deployment"), resource("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    target = resource("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    port_names = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    assert [source["configMapRef"]["name"] for source in container()["envFrom"]] == [
        resource("ConfigMap")["metadata"]["name"]
    ]


def test_probes_answer_on_the_apps_health_routes(client: TestClient) -> None:
    probes = {name: container()[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    port_names = {port["name"] for port in container()["ports"]}
    for probe in probes.values():
        assert client.get(probe["path"]).status_code == 200, probe
        assert probe["port"] in port_names


def test_configmap_holds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = resource("ConfigMap")["data"]
    settings_variables = {f"FASHION_{name.upper()}" for name in Settings.model_fields}
    assert set(data) - settings_variables <= OTHER_VARIABLES, "a key that nothing reads"
    assert "FASHION_API_KEY" not in data, "the API key belongs in a Secret"
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # raises on any invalid value, as the server would at start-up
    assert settings.require_model is True
    assert int(data["WEB_CONCURRENCY"]) >= 1


def test_api_key_comes_from_the_secret() -> None:
    (variable,) = (env for env in container()["env"] if env["name"] == "FASHION_API_KEY")
    reference = variable["valueFrom"]["secretKeyRef"]
    secret = resource("Secret")
    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] in secret["stringData"]
    assert not reference.get("optional", False), "without its Secret the API would start with no key"


def test_shutdown_drains_within_the_grace_period() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(resource("ConfigMap")["data"]["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"])
    assert pre_stop >= 5, "endpoints need a few seconds to stop sending traffic to a terminating pod"
    assert pre_stop + drain < pod["terminationGracePeriodSeconds"]


def test_pod_runs_non_root_read_only_with_bounded_resources() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    context = container()["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must stay writable"
    for kind in ("requests", "limits"):
        assert set(container()["resources"][kind]) == {"cpu", "memory"}


def store_mount(pod: dict[str, Any], container: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mount under which the ConfigMap's FASHION_MODEL_STORE lies, and the volume it mounts."""
    store = Path(resource("ConfigMap")["data"]["FASHION_MODEL_STORE"])
    (mount,) = (m for m in container["volumeMounts"] if store.is_relative_to(m["mountPath"]))
    (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])
    return mount, volume


def test_the_store_is_a_shared_volume_the_pods_mount_read_only() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    mount, volume = store_mount(pod, container())
    claim = resource("PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    assert mount["readOnly"] is True, "the servers only read the store"
    assert set(claim["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}, "pods on many nodes mount it"
    # A read-only store cannot take the admin API's changes (they write state.json): they stay off.
    names = {env["name"] for env in container()["env"]} | set(resource("ConfigMap")["data"])
    assert "FASHION_ADMIN_KEY" not in names


def test_the_publish_job_writes_the_store_the_pods_read() -> None:
    deployment = resource("Deployment")["spec"]["template"]["spec"]
    job = resource("Job")["spec"]["template"]["spec"]
    (publisher,) = job["containers"]
    server_mount, server_volume = store_mount(deployment, container())
    mount, volume = store_mount(job, publisher)
    assert volume["persistentVolumeClaim"]["claimName"] == server_volume["persistentVolumeClaim"]["claimName"]
    assert mount["mountPath"] == server_mount["mountPath"] and not mount.get("readOnly", False)
    assert publisher["command"][:4] == ["python", "-m", "training.publish", "$(FASHION_MODEL_STORE)"]
    assert publisher["envFrom"] == container()["envFrom"], "the store path and the accuracy bar the servers use"
    assert job["securityContext"]["runAsUser"] == deployment["securityContext"]["runAsUser"], "files they can read"
    tag = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["images"][0]["newTag"]
    assert publisher["image"] == f"{container()['image']}:{tag}"


def test_pod_user_is_the_images_user() -> None:
    if not DOCKERFILE.is_file():
        pytest.skip("no Dockerfile yet")
    uid = re.search(r"useradd[^\n]*--uid (\d+)", DOCKERFILE.read_text())
    assert uid, "the Dockerfile should create its user with a fixed --uid"
    assert resource("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid[1])


def test_dockerfile_passes_hadolint() -> None:
    if not DOCKERFILE.is_file():
        pytest.skip("no Dockerfile yet")
    ignores = [arg for rule in sorted(HADOLINT_IGNORED) for arg in ("--ignore", rule)]
    command = [venv_tool("hadolint"), "--no-color", "--failure-threshold", "warning", *ignores, str(DOCKERFILE)]
    linted = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr
