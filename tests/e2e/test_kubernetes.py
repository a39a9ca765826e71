"""The Kubernetes manifests (deploy/kubernetes/), checked without a cluster: they parse, every
reference between them resolves, the pod is locked down, the probes and the metrics Service
point at what the connector serves, and the ConfigMap's connector.toml passes the connector's
own `validate` (so a key renamed or dropped in the connector fails here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from connector.config import Config, load_config
from connector.runner import SHUTDOWN_SECONDS
from connector.tables import ENV_PREFIX
from tests.e2e.conftest import TIME_FACTOR

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
SECRET_EXAMPLE = "secret.example.yaml"  # the Secret's shape; never applied by kustomize

Doc = dict[str, Any]


def kustomization() -> Doc:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())  # type: ignore[no-any-return]


def load_docs(*names: str) -> list[Doc]:
    return [d for n in names for d in yaml.safe_load_all((K8S / n).read_text()) if d is not None]


def manifests() -> list[Doc]:
    return load_docs(*kustomization()["resources"])


def one(kind: str, name: str | None = None, docs: list[Doc] | None = None) -> Doc:
    found = [
        d
        for d in (manifests() if docs is None else docs)
        if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def statefulset() -> Doc:
    return one("StatefulSet")


def pod() -> Doc:
    return statefulset()["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container() -> Doc:
    [c] = pod()["containers"]
    return c  # type: ignore[no-any-return]


def config_file() -> tuple[PurePosixPath, str]:
    """The config file's path in the container and its text, from the mounted ConfigMap."""
    [volume] = [v for v in pod()["volumes"] if "configMap" in v]
    [mount] = [m for m in container()["volumeMounts"] if m["name"] == volume["name"]]
    configmap = one("ConfigMap", volume["configMap"]["name"])
    [item] = volume["configMap"]["items"]
    assert item["key"] in configmap["data"]
    return PurePosixPath(mount["mountPath"]) / item["path"], configmap["data"][item["key"]]


def config_text() -> str:
    return config_file()[1]


def pod_environ() -> dict[str, str]:
    """The container's literal env: what overrides the file inside the pod."""
    return {e["name"]: e["value"] for e in container().get("env", []) if "value" in e}


def pod_config(tmp_path: Path) -> Config:
    path = tmp_path / "connector.toml"
    path.write_text(config_text())
    return load_config(path, environ=pod_environ())


def validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`gotham-connector validate` as the pod would run it, on a copy of the file."""
    path = tmp_path / "connector.toml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(pod_environ())
    # What the Secrets fill in (the token): a stand-in value.
    env.update({e["name"]: "k8s-test-value" for e in container()["env"] if "valueFrom" in e})
    return subprocess.run(
        [sys.executable, "-m", "connector", "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60 * TIME_FACTOR,
    )


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (`512Mi`, `10Gi`, `500m`, `2`) as a number of bytes or cores."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_manifest_and_sets_the_image() -> None:
    kust = kustomization()
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_EXAMPLE}
    assert listed == present
    # The image is a placeholder name that `images:` replaces with the user's registry.
    [image] = kust["images"]
    assert image["name"] == container()["image"]
    assert image["newName"] and image["newTag"]


def test_manifests_have_the_expected_kinds_and_api_versions() -> None:
    kinds = sorted((d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in manifests())
    assert kinds == [
        ("apps/v1", "StatefulSet", "gotham-connector"),
        ("v1", "ConfigMap", "gotham-connector-config"),
        ("v1", "Service", "gotham-connector"),
        ("v1", "Service", "gotham-connector-metrics"),
        ("v1", "ServiceAccount", "gotham-connector"),
    ]
    for doc in [*manifests(), *load_docs(SECRET_EXAMPLE)]:
        assert "namespace" not in doc["metadata"]  # `kubectl -n NS apply -k` chooses it
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "gotham-connector"


def test_configmap_config_passes_the_connectors_validate(tmp_path: Path) -> None:
    out = validate(tmp_path, config_text())
    assert out.returncode == 0, out.stderr
    assert "OK (1 subscription(s))" in out.stdout


def test_a_key_the_connector_does_not_know_fails_that_check(tmp_path: Path) -> None:
    # What the test above guards against: the connector renames a key the manifest still sets.
    text = config_text()
    renamed = text.replace("\nwriter_id = ", "\nwriter_name = ", 1)
    assert renamed != text
    out = validate(tmp_path, renamed)
    assert out.returncode == 2
    assert "state.writer_name" in out.stderr


def test_every_key_the_configmap_sets_is_part_of_the_effective_config(tmp_path: Path) -> None:
    # Independent of `validate`'s unknown-key check: each key set in the file reads back, with
    # its value, from the config the connector would run with.
    cfg = pod_config(tmp_path)
    data = tomllib.loads(config_text())
    for section, table in data.items():
        if section == "subscriptions":
            assert [s.name for s in cfg.subscriptions] == [s["name"] for s in table]
            continue
        for key, value in table.items():
            attr = {"token_env": "token"}.get(key, key)
            effective = getattr(getattr(cfg, section), attr)
            if key == "token_env":
                effective = effective.env
            if isinstance(effective, Path):
                effective = str(effective)
            assert effective == value, f"{section}.{key}"


def test_configmap_config_fits_the_pod(tmp_path: Path) -> None:
    cfg = pod_config(tmp_path)
    c = container()
    # The config file the container runs with is the mounted ConfigMap key.
    path, _ = config_file()
    assert c["args"] == ["run", "--config", str(path)]
    # Metrics on every interface of the pod, on the port the probes and Services name.
    [port] = c["ports"]
    assert (cfg.metrics.enabled, cfg.metrics.host) == (True, "0.0.0.0")
    assert port == {"name": "metrics", "containerPort": cfg.metrics.port, "protocol": "TCP"}
    # The token variable the config reads is the one the Secret fills.
    [token] = [e for e in c["env"] if e["name"] == cfg.source.token.env]
    assert set(token["valueFrom"]) == {"secretKeyRef"}
    assert cfg.source.token.file is None
    # The state dir is the claim's mount, and the claim holds the whole spool.
    [claim] = statefulset()["spec"]["volumeClaimTemplates"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert PurePosixPath(mount["mountPath"]) == PurePosixPath(cfg.state.dir)
    size = quantity(claim["spec"]["resources"]["requests"]["storage"])
    assert size >= cfg.state.max_spool_bytes + 2 * cfg.state.segment_bytes
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # An S3 sink with no credentials in the file (IRSA or env from a Secret), JSON logs.
    assert cfg.sink.url.startswith("s3://")
    assert not {"key", "secret", "token", "password"} & set(cfg.sink.storage_options)
    assert cfg.state.writer_id
    assert cfg.log.format == "json"


def test_probes_use_the_named_metrics_port_and_health_paths() -> None:
    c = container()
    paths = {
        probe: (c[probe]["httpGet"]["path"], c[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": ("/healthz", "metrics"),
        "livenessProbe": ("/healthz", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
    }
    assert "metrics" in {p["name"] for p in c["ports"]}


def test_pod_runs_unprivileged_on_a_read_only_root() -> None:
    spec, c = pod(), container()
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))  # type: ignore[union-attr]
    sec = spec["securityContext"]
    assert sec["runAsNonRoot"] is True
    assert sec["runAsUser"] == uid and sec["runAsGroup"] == uid and sec["fsGroup"] == uid
    assert sec["seccompProfile"] == {"type": "RuntimeDefault"}
    csec = c["securityContext"]
    assert csec["readOnlyRootFilesystem"] is True
    assert csec["allowPrivilegeEscalation"] is False
    assert csec.get("privileged", False) is False
    assert csec["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in csec["capabilities"]
    # No Kubernetes API token in the pod: the connector never calls the API.
    assert spec["automountServiceAccountToken"] is False
    assert one("ServiceAccount")["automountServiceAccountToken"] is False


def test_every_writable_path_is_a_volume() -> None:
    volumes = {v["name"]: v for v in pod()["volumes"]}
    claims = {t["metadata"]["name"] for t in statefulset()["spec"]["volumeClaimTemplates"]}
    assert not set(volumes) & claims
    mounts = container()["volumeMounts"]
    for mount in mounts:
        assert mount["name"] in set(volumes) | claims, mount["name"]
        volume = volumes.get(mount["name"], {})
        if "configMap" in volume or "secret" in volume:
            assert mount["readOnly"] is True
        elif not mount.get("readOnly"):
            assert mount["name"] in claims or "emptyDir" in volume, mount["name"]
    for name, volume in volumes.items():
        assert name in {m["name"] for m in mounts}, f"volume {name} is never mounted"
        if "emptyDir" in volume:
            assert quantity(volume["emptyDir"]["sizeLimit"]) <= 2**30
    assert "/tmp" in {m["mountPath"] for m in mounts}


def test_references_between_manifests_resolve() -> None:
    sts, spec, c = statefulset(), pod(), container()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert selects(sts["spec"]["selector"]["matchLabels"], labels)
    # The governing Service is headless and selects the pods.
    governing = one("Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert selects(governing["spec"]["selector"], labels)
    one("ServiceAccount", spec["serviceAccountName"])
    config_file()  # the ConfigMap and its key exist
    # Secrets are not applied by kustomize (no placeholder may overwrite the real token): each
    # one referenced has its shape in secret.example.yaml, with the key the pod reads.
    examples = load_docs(SECRET_EXAMPLE)
    refs = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e]
    assert refs
    for ref in refs:
        secret = one("Secret", ref["name"], docs=examples)
        assert ref["key"] in secret["stringData"]
        assert not ref.get("optional", False)
    assert not [d for d in manifests() if d["kind"] == "Secret"]
    # Every Service's targetPort is a port the container names.
    names = {p["name"] for p in c["ports"]}
    for service in (d for d in manifests() if d["kind"] == "Service"):
        assert selects(service["spec"]["selector"], labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_termination_grace_period_exceeds_the_shutdown_budget() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    budget = int(re.search(r"exit 0 within (\d+) s", dockerfile).group(1))  # type: ignore[union-attr]
    readme = (ROOT / "README.md").read_text()
    assert f"exits 0 within {budget} s" in readme
    assert budget > SHUTDOWN_SECONDS
    assert pod()["terminationGracePeriodSeconds"] > budget


def test_resources_leave_headroom_over_the_measured_peak() -> None:
    # The README's benchmark table, "peak RSS ours (receiver + converter)": "252 MiB (42 + 209)".
    readme = (ROOT / "README.md").read_text()
    peaks = [int(m) for m in re.findall(r"(\d+) MiB \(\d+ \+ \d+\)", readme)]
    assert peaks, "the README's measured peak RSS"
    peak = max(peaks) * 2**20
    resources = container()["resources"]
    assert quantity(resources["requests"]["memory"]) >= peak
    assert quantity(resources["limits"]["memory"]) >= 1.5 * peak
    assert quantity(resources["requests"]["cpu"]) <= quantity(resources["limits"]["cpu"])
    assert quantity(resources["requests"]["memory"]) <= quantity(resources["limits"]["memory"])


def test_metrics_service_carries_the_prometheus_scrape_annotations(tmp_path: Path) -> None:
    cfg = pod_config(tmp_path)
    service = one("Service", "gotham-connector-metrics")
    assert service["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(cfg.metrics.port),
        "prometheus.io/path": "/metrics",
    }
    [port] = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 9108, "metrics")
    # A connector that is not ready (gotham_connector_ready 0) is the one to scrape.
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_one_replica_per_set_of_subscriptions() -> None:
    # Replicas share the ConfigMap: a second one would stream the same subscriptions again.
    spec = statefulset()["spec"]
    assert spec["replicas"] == 1
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }


def test_manifests_match_the_kubernetes_schemas() -> None:
    # Offline JSON schemas shipped in the package; skipped where it is not installed.
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in [*manifests(), *load_docs(SECRET_EXAMPLE)]:
        for version in ("1.29.0", "1.33.0"):
            kubernetes_validate.validate(doc, version, strict=True)


# The README's recipe for a second connector: an overlay of its own that renames everything
# per connector and replaces connector.toml (kept equal to the README's text by hand).
OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
nameSuffix: -ships
labels:
  - pairs:
      app.kubernetes.io/instance: gotham-connector-ships
    includeSelectors: true
configMapGenerator:
  - name: gotham-connector-config
    behavior: replace
    files:
      - connector.toml
"""


def kustomize(directory: Path) -> list[Doc]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60 * TIME_FACTOR,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")


@needs_kubectl
def test_kustomize_builds_the_manifests_with_the_image() -> None:
    built = kustomize(K8S)
    key = sorted((d["kind"], d["metadata"]["name"]) for d in built)
    assert key == sorted((d["kind"], d["metadata"]["name"]) for d in manifests())
    [image] = kustomization()["images"]
    [c] = one("StatefulSet", docs=built)["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"{image['newName']}:{image['newTag']}"


@needs_kubectl
def test_a_second_connector_overlay_keeps_the_two_apart(tmp_path: Path) -> None:
    overlay = tmp_path / "ships"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(OVERLAY.format(base=os.path.relpath(K8S, overlay)))
    data = tomllib.loads(config_text())
    ships = config_text().replace('name = "everything"', 'name = "ships"')
    ships = ships.replace(
        f'writer_id = "{data["state"]["writer_id"]}"', 'writer_id = "gotham-ships"'
    )
    (overlay / "connector.toml").write_text(ships)
    base, built = manifests(), kustomize(overlay)
    # Nothing named alike: two StatefulSets, two claims, two ConfigMaps, two sets of Services.
    assert not {(d["kind"], d["metadata"]["name"]) for d in base} & {
        (d["kind"], d["metadata"]["name"]) for d in built
    }
    sts = one("StatefulSet", docs=built)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert not selects(statefulset()["spec"]["selector"]["matchLabels"], labels)
    for service in (d for d in built if d["kind"] == "Service"):
        assert selects(service["spec"]["selector"], labels)
    one("Service", sts["spec"]["serviceName"], docs=built)
    # The token Secret stays the shared one; the config is the overlay's and still valid.
    [ref] = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    ]
    assert ref == "gotham-connector-token"
    [volume] = [v for v in sts["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    configmap = one("ConfigMap", volume["configMap"]["name"], docs=built)
    path = tmp_path / "built.toml"
    path.write_text(configmap["data"]["connector.toml"])
    cfg = load_config(path, environ={})
    assert [s.name for s in cfg.subscriptions] == ["ships"]
    assert cfg.state.writer_id == "gotham-ships" != data["state"]["writer_id"]
    assert cfg.sink.url == data["sink"]["url"]  # one sink for all connectors
