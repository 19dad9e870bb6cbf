"""Kubernetes manifests for the reference design's batch (scenario 2) and Triton (scenario 3) deployments.

The templates in ``veil/k8s_templates`` are plain, valid manifests (``deploy/k8s`` holds identical copies);
:func:`render` loads them with PyYAML and fills the parsed documents from a :class:`K8sConfig`; no text
templating. With the default config the result equals the templates.
"""

from __future__ import annotations

import copy
import math
import os
import posixpath
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from veil.errors import VeilError
from veil.files import follow_umask

TEMPLATE_PACKAGE = "veil"
TEMPLATE_DIR = "k8s_templates"
# In apply order: the namespace and volumes first, then the workloads.
TEMPLATES: tuple[str, ...] = (
    "namespace.yaml",
    "pvc-inference-data.yaml",
    "pvc-triton-model-repo.yaml",
    "job-raw.yaml",
    "job-obfuscated.yaml",
    "job-indexed.yaml",
    "job-merge.yaml",
    "triton-deployment.yaml",
    "triton-service.yaml",
)
GPU_RESOURCE = "nvidia.com/gpu"
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


def format_alpha(value: float | str) -> str:
    """Canonical text of one noise level: ``"0.50"`` -> ``"0.5"``; rejects non-numbers and values <= 0."""
    try:
        alpha = float(value)
    except ValueError:
        raise VeilError(f"alpha must be a number like 0.5, got {value!r}") from None
    if not math.isfinite(alpha) or alpha <= 0:
        raise VeilError(f"alpha must be a finite number > 0, got {value!r}")
    return f"{alpha:g}"


def parse_alphas(text: str) -> tuple[str, ...]:
    """``"0.2,0.5"`` -> ``("0.2", "0.5")`` (order kept, duplicates dropped)."""
    alphas = [format_alpha(part.strip()) for part in text.split(",") if part.strip()]
    if not alphas:
        raise VeilError(f"--alpha needs at least one value like 0.5 or 0.2,0.5, got {text!r}")
    return tuple(dict.fromkeys(alphas))


@dataclass(frozen=True)
class K8sConfig:
    """What ``veil k8s render`` fills in; the defaults reproduce ``deploy/k8s`` exactly.

    ``gpus`` is the ``nvidia.com/gpu`` limit of every inference pod and of Triton; 0 renders CPU-only pods
    with ``cpu``/``memory`` requests instead. ``storage_class`` ``None`` (or ``""``) omits the field so the
    cluster's default class applies. ``transform_dir`` may use ``$(ALPHA)``, which the kubelet expands.
    """

    namespace: str = "inference"
    image: str = "veil:gpu"
    image_pull_policy: str = "IfNotPresent"
    data_pvc: str = "inference-data"
    model_repo_pvc: str = "triton-model-repo"
    storage_class: str | None = "ontap-nas"
    access_mode: str = "ReadWriteMany"
    data_size: str = "50Gi"
    model_repo_size: str = "100Gi"
    alphas: tuple[str, ...] = ("0.8",)
    gpus: int = 1
    cpu: str = "2"
    memory: str = "4Gi"
    num_shards: int = 2
    dataset: str = "/data/FDDB"
    weights: str = "/data/weights/FaceBoxes.pth"
    transform_dir: str = "/data/transforms/alpha-$(ALPHA)"
    results_dir: str = "/data/results"
    backoff_limit: int = 5
    triton_image: str = "nvcr.io/nvidia/tritonserver:24.08-py3"
    service_type: str = "NodePort"

    def __post_init__(self) -> None:
        for label, value in (
            ("namespace", self.namespace),
            ("data PVC", self.data_pvc),
            ("model-repo PVC", self.model_repo_pvc),
        ):
            if len(value) > 63 or not _DNS_LABEL.match(value):
                raise VeilError(f"{label} must be a DNS label (a-z, 0-9, '-', at most 63), got {value!r}")
        for label, value in (
            ("data size", self.data_size),
            ("model-repo size", self.model_repo_size),
            ("cpu", self.cpu),
            ("memory", self.memory),
        ):
            if not _QUANTITY.match(value):
                raise VeilError(f"{label} must be a Kubernetes quantity like 50Gi or 500m, got {value!r}")
        if self.gpus < 0:
            raise VeilError(f"--gpus must be >= 0, got {self.gpus}")
        if self.num_shards < 1:
            raise VeilError(f"--num-shards must be >= 1, got {self.num_shards}")
        if self.backoff_limit < 0:
            raise VeilError(f"backoff limit must be >= 0, got {self.backoff_limit}")
        if not self.image.strip() or not self.triton_image.strip():
            raise VeilError("--image and --triton-image must not be empty")
        if self.access_mode not in _ACCESS_MODES:
            raise VeilError(
                f"access mode must be one of {', '.join(_ACCESS_MODES)}, got {self.access_mode!r}"
            )
        if self.service_type not in _SERVICE_TYPES:
            raise VeilError(
                f"service type must be one of {', '.join(_SERVICE_TYPES)}, got {self.service_type!r}"
            )
        for label, path in (
            ("dataset", self.dataset),
            ("weights", self.weights),
            ("results", self.results_dir),
        ):
            if not path.startswith("/"):
                raise VeilError(
                    f"{label} path must be absolute inside the pod (e.g. under /data), got {path!r}"
                )
        if not self.alphas:
            raise VeilError("at least one alpha is needed for the obfuscated Job")
        object.__setattr__(self, "alphas", tuple(dict.fromkeys(format_alpha(a) for a in self.alphas)))
        if len(self.alphas) > 1 and "$(ALPHA)" not in self.transform_dir:
            raise VeilError("several alphas need a transform dir containing $(ALPHA), or all Jobs share one")


@dataclass
class Manifest:
    """One rendered document and the file name it is written to."""

    filename: str
    doc: dict[str, Any]


@dataclass(frozen=True)
class ContainerCommand:
    """The command line of one container: ``argv`` as written, ``env`` its literal ``value`` variables."""

    kind: str
    name: str
    container: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def expanded(self, extra_env: Mapping[str, str] | None = None) -> list[str]:
        """``argv`` after the kubelet's ``$(VAR)`` expansion, with ``extra_env`` for runtime variables."""
        env = {**self.env, **(extra_env or {})}
        return [expand_vars(arg, env) for arg in self.argv]


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in command/args: ``$$`` -> ``$``; unknown names stay as written."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _VAR_REF.sub(sub, text)


def load_template(name: str) -> dict[str, Any]:
    """One template, parsed; works from a source checkout and from an installed wheel."""
    ref = resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_DIR, name)
    doc = yaml.safe_load(ref.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise VeilError(f"template {name} is not a YAML mapping")
    return doc


def template_text(name: str) -> str:
    """A template's exact text (for writing ``deploy/k8s`` and checking it is in sync)."""
    return resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_DIR, name).read_text(encoding="utf-8")


def pod_specs(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod spec(s) inside a workload document (Job, Deployment, CronJob, Pod, ...); [] for others."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return [spec]
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        return [template["spec"]]
    return []


def container_commands(
    docs: Iterable[Mapping[str, Any]], entrypoint: Sequence[str] = ("veil",)
) -> list[ContainerCommand]:
    """Every container's command line (``command`` + ``args``; the image ``entrypoint`` when no command)."""
    out = []
    for doc in docs:
        for spec in pod_specs(doc):
            for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                argv = [*(container.get("command") or entrypoint), *container.get("args", [])]
                env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
                out.append(
                    ContainerCommand(
                        kind=str(doc.get("kind")),
                        name=str(doc.get("metadata", {}).get("name")),
                        container=str(container.get("name")),
                        argv=tuple(str(a) for a in argv),
                        env=env,
                    )
                )
    return out


def _resources(cfg: K8sConfig, gpus: int) -> dict[str, Any]:
    if gpus > 0:
        return {"limits": {GPU_RESOURCE: gpus}}
    return {"requests": {"cpu": cfg.cpu, "memory": cfg.memory}}


def _eval_args(cfg: K8sConfig) -> list[str]:
    return ["eval", "--dataset", cfg.dataset, "--weights", cfg.weights]


def _results(cfg: K8sConfig, name: str) -> str:
    return posixpath.join(cfg.results_dir.rstrip("/") or "/", name)


def alpha_job_name(alpha: str) -> str:
    """``0.8`` -> ``veil-eval-alpha-0-8`` (dots and signs are not DNS-label characters)."""
    return "veil-eval-alpha-" + re.sub(r"[^a-z0-9]+", "-", alpha.lower()).strip("-")


def _fill_workload(doc: dict[str, Any], cfg: K8sConfig, claim: str, gpus: int | None, image: str) -> None:
    """Namespace, image, volume claim and resources of a Job/Deployment; ``gpus`` None keeps resources."""
    doc["metadata"]["namespace"] = cfg.namespace
    if doc["kind"] == "Job":
        doc["spec"]["backoffLimit"] = cfg.backoff_limit
    for spec in pod_specs(doc):
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                volume["persistentVolumeClaim"]["claimName"] = claim
        for container in spec["containers"]:
            container["image"] = image
            container["imagePullPolicy"] = cfg.image_pull_policy
            if gpus is not None:
                container["resources"] = _resources(cfg, gpus)


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod_specs(doc)[0]["containers"][0]
    return container


def _render_pvc(doc: dict[str, Any], cfg: K8sConfig, name: str, size: str) -> dict[str, Any]:
    doc["metadata"].update(name=name, namespace=cfg.namespace)
    spec = doc["spec"]
    spec["accessModes"] = [cfg.access_mode]
    if cfg.storage_class:
        spec["storageClassName"] = cfg.storage_class
    else:
        spec.pop("storageClassName", None)
    spec["resources"]["requests"]["storage"] = size
    return doc


def _render_obfuscated(template: dict[str, Any], cfg: K8sConfig) -> list[Manifest]:
    out = []
    for alpha in cfg.alphas:
        doc = copy.deepcopy(template)
        doc["metadata"]["name"] = alpha_job_name(alpha)
        _fill_workload(doc, cfg, cfg.data_pvc, cfg.gpus, cfg.image)
        container = _container(doc)
        container["env"] = [e for e in container.get("env", []) if e["name"] != "ALPHA"]
        container["env"].insert(0, {"name": "ALPHA", "value": alpha})
        container["args"] = [*_eval_args(cfg), "--transform", cfg.transform_dir]
        name = "job-obfuscated.yaml" if len(cfg.alphas) == 1 else f"job-obfuscated-{alpha}.yaml"
        out.append(Manifest(name, doc))
    return out


def render(cfg: K8sConfig | None = None) -> list[Manifest]:
    """All manifests for ``cfg`` in apply order (one obfuscated Job per alpha)."""
    cfg = cfg or K8sConfig()
    out: list[Manifest] = []
    for name in TEMPLATES:
        doc = load_template(name)
        if name == "namespace.yaml":
            doc["metadata"]["name"] = cfg.namespace
        elif name == "pvc-inference-data.yaml":
            _render_pvc(doc, cfg, cfg.data_pvc, cfg.data_size)
        elif name == "pvc-triton-model-repo.yaml":
            _render_pvc(doc, cfg, cfg.model_repo_pvc, cfg.model_repo_size)
        elif name == "job-raw.yaml":
            _fill_workload(doc, cfg, cfg.data_pvc, cfg.gpus, cfg.image)
            _container(doc)["args"] = _eval_args(cfg)
        elif name == "job-obfuscated.yaml":
            out.extend(_render_obfuscated(doc, cfg))
            continue
        elif name == "job-indexed.yaml":
            _fill_workload(doc, cfg, cfg.data_pvc, cfg.gpus, cfg.image)
            doc["spec"]["completions"] = doc["spec"]["parallelism"] = cfg.num_shards
            part = _results(cfg, f"part-$({COMPLETION_INDEX_ENV}).json")
            args = [*_eval_args(cfg), "--num-shards", str(cfg.num_shards), "--json", part]
            _container(doc)["args"] = args
        elif name == "job-merge.yaml":
            _fill_workload(doc, cfg, cfg.data_pvc, None, cfg.image)
            parts = [_results(cfg, f"part-{i}.json") for i in range(cfg.num_shards)]
            _container(doc)["args"] = ["eval", "merge", *parts, "--json", _results(cfg, "merged.json")]
        elif name == "triton-deployment.yaml":
            _fill_workload(doc, cfg, cfg.model_repo_pvc, cfg.gpus, cfg.triton_image)
        elif name == "triton-service.yaml":
            doc["metadata"]["namespace"] = cfg.namespace
            doc["spec"]["type"] = cfg.service_type
        out.append(Manifest(name, doc))
    return out


def to_yaml(docs: Iterable[Mapping[str, Any]]) -> str:
    """A multi-document YAML stream (``---`` between documents), keys in template order."""
    return yaml.safe_dump_all([dict(d) for d in docs], sort_keys=False, explicit_start=True)


def write_manifests(manifests: Sequence[Manifest], out_dir: str | os.PathLike[str]) -> list[Path]:
    """One file per manifest under ``out_dir``, each written to a temp file then renamed into place."""
    target_dir = Path(out_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for manifest in manifests:
        target = target_dir / manifest.filename
        fd, tmp = tempfile.mkstemp(prefix=f".{manifest.filename}.", suffix=".tmp", dir=target_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                yaml.safe_dump(manifest.doc, fh, sort_keys=False)
            follow_umask(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
