"""cluster/: the KubeRay manifests validate against KubeRay's CRD schemas, the ray up config against
Ray's own schema, and everything they name (image, entrypoint, configs, import path) exists here.

The CRDs are vendored in cluster/kuberay/crds/ (KubeRay's ray-operator/config/crd/bases; origin,
version and licence in its README.md).
Unknown fields are errors here, as with `kubectl apply` (strict field validation), although the CRD
schemas themselves only prune them.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "cluster" / "kuberay" / "crds"
KUBERAY = ROOT / "cluster" / "kuberay"
DOCKERFILE = ROOT / "cluster" / "docker" / "Dockerfile"
AWS = ROOT / "cluster" / "aws" / "ambient.yaml"
MANIFESTS = {"RayCluster": "raycluster.yaml", "RayJob": "rayjob.yaml", "RayService": "rayservice.yaml"}
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


def manifest(kind: str) -> dict:
    return yaml.safe_load((KUBERAY / MANIFESTS[kind]).read_text())


def strict(schema: dict) -> dict:
    """The schema with unknown fields forbidden wherever it lists the fields (as kubectl's strict mode)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_schema(kind: str) -> dict:
    return copy.deepcopy(_strict_crd_schema(kind))


@functools.cache
def _strict_crd_schema(kind: str) -> dict:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict(version["schema"]["openAPIV3Schema"])


def test_crds_are_vendored_with_origin_and_licence():
    """The schemas travel with the project (a clone anywhere validates), their origin noted."""
    assert CRDS.is_relative_to(ROOT)
    for name in CRD_FILES.values():
        assert (CRDS / name).is_file(), f"{name} missing from {CRDS}"
    readme = (CRDS / "README.md").read_text()
    assert "ray-project/kuberay" in readme and "feeaf72" in readme and "Apache" in readme


@pytest.mark.parametrize("kind", MANIFESTS)
def test_manifest_validates_against_the_kuberay_crd(kind):
    doc = manifest(kind)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    jsonschema.validate(doc, crd_schema(kind))


def test_strict_validation_rejects_a_misspelt_field():
    doc = manifest("RayCluster")
    doc["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, crd_schema("RayCluster"))


def cluster_specs() -> dict[str, dict]:
    return {
        "RayCluster": manifest("RayCluster")["spec"],
        "RayJob": manifest("RayJob")["spec"]["rayClusterSpec"],
        "RayService": manifest("RayService")["spec"]["rayClusterConfig"],
    }


def pod_templates(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [(g, c) for g in groups for c in g["template"]["spec"]["containers"]]


def test_rayjob_runs_on_the_raycluster_spec():
    assert manifest("RayJob")["spec"]["rayClusterSpec"] == manifest("RayCluster")["spec"]


def test_gpu_worker_group_autoscales_and_head_is_cpu_only():
    for name, spec in cluster_specs().items():
        assert spec["enableInTreeAutoscaling"] is True, name
        head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" not in head_limits, name
        gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
        assert gpu and gpu[0]["maxReplicas"] > gpu[0]["minReplicas"], name
        limits = gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, name


def dockerfile() -> tuple[str, str]:
    """(image title, WORKDIR) declared by cluster/docker/Dockerfile."""
    text = DOCKERFILE.read_text()
    title = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', text).group(1)
    workdir = re.search(r"^WORKDIR\s+(\S+)", text, re.M).group(1)
    return title, workdir


def project_path(path: str) -> Path:
    """A path inside the image (absolute under WORKDIR, or relative to it) -> the same file here."""
    _, workdir = dockerfile()
    rel = path[len(workdir) + 1 :] if path.startswith(workdir + "/") else path
    assert not rel.startswith("/"), f"{path} is outside the image's {workdir}"
    return ROOT / rel


def test_image_is_the_projects_dockerfile_at_the_project_version():
    title, workdir = dockerfile()
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    images = [c["image"] for spec in cluster_specs().values() for _, c in pod_templates(spec)]
    images.append(yaml.safe_load(AWS.read_text())["docker"]["image"])
    images += [c["image"] for c in manifest("RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"]]
    for image in images:
        repo, tag = image.rsplit(":", 1)
        assert repo.rsplit("/", 1)[-1] == title and tag == version, image
    for spec in cluster_specs().values():
        assert all(c["workingDir"] == workdir for _, c in pod_templates(spec))
    # What the Dockerfile copies exists.
    for src in re.findall(r"^COPY\s+(.+)\s+\S+$", DOCKERFILE.read_text(), re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"


def test_s3_credentials_come_from_the_secret_and_metrics_port_is_exposed():
    secrets = {
        d["metadata"]["name"]: set(d["stringData"])
        for d in yaml.safe_load_all((KUBERAY / "secrets.example.yaml").read_text())
    }
    for name, spec in cluster_specs().items():
        for group, container in pod_templates(spec):
            env = {e["name"]: e for e in container["env"]}
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                ref = env[var]["valueFrom"]["secretKeyRef"]
                assert ref["key"] in secrets[ref["name"]], (name, var)
            for e in container["env"]:
                assert "value" not in e or "SECRET" not in e["name"], "a secret written in the manifest"
            port = group["rayStartParams"]["metrics-export-port"]
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert named["metrics"] == int(port), name


def test_rayjob_entrypoint_and_config_exist_and_validate():
    from ambient.config import load_config
    from ambient.train import FinetuneConfig

    argv = shlex.split(manifest("RayJob")["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/finetune.py"] and project_path(argv[1]).is_file()
    config = argv[argv.index("--config") + 1]
    assert config == "jobs/configs/sdxl_lora.yaml" and project_path(config).is_file()
    cfg = load_config(FinetuneConfig, project_path(config), [])
    assert cfg.scaling.use_gpu and cfg.model.lora_rank > 0
    # The GPU group can hold the run: one train worker per GPU pod, with its CPUs.
    gpu = next(
        g for g in manifest("RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"
    )
    assert gpu["maxReplicas"] >= cfg.scaling.num_workers
    cpus = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    assert float(cpus) >= cfg.scaling.cpus_per_worker


def test_rayservice_import_path_imports_and_its_args_validate():
    from ambient.serve.app import load_serve_config

    serve = yaml.safe_load(manifest("RayService")["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    args = dict(app["args"])
    config = args.pop("config")
    assert project_path(config).is_file()
    cfg = load_serve_config(str(project_path(config)), args.pop("set", []), args)
    assert cfg.model.startswith("s3://") and cfg.replica.num_gpus == 1
    # The token variable the app reads is set from the Secret on the head, where the app is built.
    head = manifest("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ][0]
    assert cfg.auth.token_env in {e["name"] for e in head["env"]}


def test_podmonitor_scrapes_the_metrics_port():
    pm = yaml.safe_load((KUBERAY / "podmonitor.yaml").read_text())
    assert pm["kind"] == "PodMonitor" and pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_ray_up_config_validates_against_rays_schema_and_names_existing_files():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load(AWS.read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0
    spot = [
        t
        for t in types.values()
        if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    ]
    assert spot and all(t["max_workers"] > 0 for t in spot)
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert commands.count("--metrics-export-port=8080") == 2 and "ray stop" not in commands
    for path in re.findall(r"(/app/\S+\.py)", commands):
        assert project_path(path).is_file(), path


# ---- the capacity plan (docs/capacity.md, from benchmarks/capacity.py) decides the GPU types --------------

PLAN = ROOT / "docs" / "results" / "capacity.json"
LORA_CONFIG, FULL_CONFIG = "jobs/configs/sdxl_lora.yaml", "jobs/configs/sdxl_full.yaml"


def plan_fits(config: str, world: int | None = None) -> dict[str, bool]:
    """GPU name -> whether ``config`` runs as configured (its ZeRO stage, no offload, its micro-batch) on
    ``world`` GPUs (default: its own world size) according to the generated plan."""
    entry = next(c for c in json.loads(PLAN.read_text())["configs"] if c["shape"]["name"] == config)
    world = world or entry["shape"]["num_workers"]
    stage = entry["configured_zero_stage"]
    return {
        r["gpu"]: r["configured_batch_fits"]
        for r in entry["plan"]
        if r["world"] == world and r["zero_stage"] == stage and not r["offload"]
    }


def gpu_of_instance(instance: str):
    from ambient.capacity import GPUS

    (gpu,) = [g for g in GPUS if instance in (g.instance_1, g.instance_8)]
    return gpu


def test_ray_up_gpu_node_types_follow_the_capacity_plan():
    types = yaml.safe_load(AWS.read_text())["available_node_types"]
    gpu_types = {n: t for n, t in types.items() if n.startswith("gpu")}
    full = {n for n, t in gpu_types.items() if t["resources"].get("gpu_80gb")}
    assert full and full != set(gpu_types), "node types for both the full fine-tune and LoRA"
    # The full fine-tune's nodes: GPUs on which it fits even unsharded (1 GPU), so 80 GB ones.
    lora_fits, full_fits = plan_fits(LORA_CONFIG), plan_fits(FULL_CONFIG, world=1)
    for name, t in gpu_types.items():
        gpu = gpu_of_instance(t["node_config"]["InstanceType"])
        if name in full:
            assert gpu.memory_bytes >= 79 * 2**30 and full_fits[gpu.name], (name, gpu.name)
            assert t["resources"]["gpu_80gb"] == 8 and gpu.instance_8 == t["node_config"]["InstanceType"]
        else:
            assert lora_fits[gpu.name], (name, gpu.name)


def affinity_min_mib(group: dict) -> int:
    terms = group["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    (expr,) = [e for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]]
    assert expr["key"] == "nvidia.com/gpu.memory" and expr["operator"] == "Gt"
    return int(expr["values"][0])


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_gpu_groups_admit_only_gpus_the_plan_fits(kind):
    from ambient.capacity import GPUS

    groups = {g["groupName"]: g for g in cluster_specs()[kind]["workerGroupSpecs"]}
    for group, config, world in (("gpu", LORA_CONFIG, None), ("gpu-80gb", FULL_CONFIG, 1)):
        floor = affinity_min_mib(groups[group])
        admitted = [g for g in GPUS if g.memory_bytes / 2**20 > floor]
        fits = plan_fits(config, world)
        assert admitted and all(fits[g.name] for g in admitted), (group, [g.name for g in admitted])
    assert affinity_min_mib(groups["gpu-80gb"]) >= 79000  # the full fine-tune's group: 80 GB GPUs
    # KubeRay passes the value to `ray start --resources` as written: a quoted JSON object.
    assert json.loads(json.loads(groups["gpu-80gb"]["rayStartParams"]["resources"])) == {"gpu_80gb": 1}


# ---- security: Ray's token auth, the head's NetworkPolicy, locked-down pods ------------------------------

HEAD_RAY_PORTS = {6379, 8265, 10001}


def secrets_example() -> dict[str, set[str]]:
    docs = yaml.safe_load_all((KUBERAY / "secrets.example.yaml").read_text())
    return {d["metadata"]["name"]: set(d["stringData"]) for d in docs}


def test_every_kuberay_cluster_requires_rays_token_from_a_secret():
    secrets = secrets_example()
    for name, spec in cluster_specs().items():
        auth = spec["authOptions"]
        assert auth["mode"] == "token", name
        assert "auth_token" in secrets[auth["secretName"]], name  # the key KubeRay reads
    submitter = manifest("RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (cluster_specs()["RayJob"]["authOptions"]["secretName"], "auth_token")


def test_ray_up_nodes_use_token_auth_and_keep_the_job_api_on_loopback():
    config = yaml.safe_load(AWS.read_text())
    options = " ".join(config["docker"]["run_options"])
    assert "-e RAY_AUTH_MODE=token" in options
    token_path = re.search(r"-e RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    assert token_path in config["file_mounts"]
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


def test_ray_version_is_pinned_to_the_one_the_manifests_name():
    import ray

    pin = re.search(r'"ray\[[^\]]+\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    versions = {spec["rayVersion"] for spec in cluster_specs().values()}
    assert versions == {pin} == {ray.__version__}


def network_policies() -> dict[str, dict]:
    docs = yaml.safe_load_all((KUBERAY / "networkpolicy.yaml").read_text())
    return {d["metadata"]["name"]: d["spec"] for d in docs}


def admitted_from_anywhere(policy: dict) -> set[int]:
    """Ports an ingress rule without `from` opens to every source (all ports when a rule has none)."""
    ports: set[int] = set()
    for rule in policy["ingress"]:
        if not rule.get("from"):
            assert rule.get("ports"), "a rule admitting every source on every port"
            ports |= {p["port"] for p in rule["ports"]}
    return ports


def test_the_heads_ray_ports_admit_only_the_platforms_pods_and_the_operator():
    policies = network_policies()
    head = policies["ambient-ray-head"]
    assert head["policyTypes"] == ["Ingress"]
    assert head["podSelector"]["matchLabels"]["ray.io/node-type"] == "head"
    assert not HEAD_RAY_PORTS & admitted_from_anywhere(head)  # the GCS, job API and client port
    assert admitted_from_anywhere(head) == {8000}  # the sampler, behind its own bearer token
    for rule in head["ingress"]:
        for peer in rule.get("from", []):
            labels = peer["podSelector"].get("matchLabels", {}) if "podSelector" in peer else {}
            if labels.get("app.kubernetes.io/name") == "kuberay-operator":
                assert [p["port"] for p in rule["ports"]] == [8265]
    # Every pod the manifests create carries the label the policies select and admit.
    selector = head["podSelector"]["matchLabels"]["app.kubernetes.io/part-of"]
    templates = [g["template"] for spec in cluster_specs().values() for g, _ in pod_templates(spec)]
    templates.append(manifest("RayJob")["spec"]["submitterPodTemplate"])
    for template in templates:
        assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == selector
    assert not HEAD_RAY_PORTS & admitted_from_anywhere(policies["ambient-ray-workers"])


def all_pod_specs() -> list[tuple[str, dict]]:
    specs = [
        (f"{kind}/{group.get('groupName', 'head')}", group["template"]["spec"])
        for kind, spec in cluster_specs().items()
        for group, _ in pod_templates(spec)
    ]
    return [*specs, ("RayJob/submitter", manifest("RayJob")["spec"]["submitterPodTemplate"]["spec"])]


def test_pods_run_as_non_root_without_privilege_or_capabilities():
    for where, pod in all_pod_specs():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, where
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
        # Only the head (the autoscaler sidecar calls the Kubernetes API) gets a service-account token.
        assert pod.get("automountServiceAccountToken", True) is ("/head" in where), where
    assert re.search(r"^USER ray$", DOCKERFILE.read_text(), re.M)


def gibibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(Gi|Mi)", quantity).groups()
    return float(number) * (1 if unit == "Gi" else 1 / 1024)


def test_gpu_pods_request_disk_for_a_checkpoint_download_and_the_export():
    plan = {c["shape"]["name"]: c for c in json.loads(PLAN.read_text())["configs"]}
    for kind in ("RayCluster", "RayJob"):
        groups = {g["groupName"]: g for g in cluster_specs()[kind]["workerGroupSpecs"]}
        for group, config in (("gpu", LORA_CONFIG), ("gpu-80gb", FULL_CONFIG)):
            entry = plan[config]
            storage = entry["storage"][f"zero{entry['configured_zero_stage']}"]
            need = (storage["checkpoint_bytes"] + storage["export_bytes"]) / 2**30
            requests = groups[group]["template"]["spec"]["containers"][0]["resources"]["requests"]
            assert gibibytes(requests["ephemeral-storage"]) >= need, (kind, group, need)
