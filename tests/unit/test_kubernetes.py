"""The Kubernetes manifests (``deploy/kubernetes/``): valid, and wired as the code expects.

No cluster runs here. Every manifest is validated offline against the Kubernetes
OpenAPI schemas (``kubernetes-validate``), and the cross-references that a typo
would break are checked against the code itself: selectors and pod labels, Service
and NetworkPolicy ports and container ports, the ``LIVECOMMENTS_*`` names the
settings classes read (and that the values load), the probe paths the servers
route, the ConfigMap and Secret keys pods use, the files ``*_FILE`` settings name,
and the CLI commands the containers and their hooks run.

The overlay is built with kustomize (``kustomize build`` or ``kubectl kustomize``)
when one is on the PATH; without it the base is read by the small loader below
(plain resource files and the one ``configMapGenerator``), the overlay's patches
are checked to target resources of the base, and the overlay's build is skipped.
The custom resources of the operators (PerconaServerMongoDB, RedisFailover) have
no schema here: they are not schema-checked, only cross-referenced.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from livecomments.cli.main import main as cli
from livecomments.comment_service.app import build_app
from livecomments.kernel import ids
from livecomments.kernel import settings as cfg

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
PRODUCTION = KUBE / "overlays" / "production"
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
BUILDS = ("base", "overlays/production")

# The newest Kubernetes minor whose schemas kubernetes-validate>=1.34 ships.
K8S_VERSION = "1.34.0"

# Custom resources: no schema to validate them against (their CRDs come with the
# operators). Any other kind must validate.
CUSTOM_KINDS = {
    ("psmdb.percona.com/v1", "PerconaServerMongoDB"),
    ("databases.spotahome.com/v1", "RedisFailover"),
}

# The settings class of each server command, and which setting each named
# container port is.
SERVERS: dict[str, tuple[type[cfg.BackendSettings], dict[str, str]]] = {
    "rtms": (cfg.RTMSSettings, {"sse": "port", "grpc": "grpc_port", "admin": "admin_port"}),
    "dispatcher": (cfg.DispatcherSettings, {"grpc": "port", "admin": "admin_port"}),
    "comment-service": (cfg.CommentServiceSettings, {"https": "port", "admin": "admin_port"}),
}

Doc = dict[str, Any]


# -- building ------------------------------------------------------------------------


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _load_yaml(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load_base() -> list[Doc]:
    """The base as kustomize builds it, for what the base uses: resource files, and
    a configMapGenerator of files without a name hash."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "configMapGenerator"}, (
        "the base uses a kustomize feature this loader does not know: teach it"
    )
    docs: list[Doc] = []
    for name in kustomization["resources"]:
        docs += _load_yaml(BASE / name)
    for generator in kustomization.get("configMapGenerator", ()):
        assert generator.get("options", {}).get("disableNameSuffixHash") is True
        data = {Path(f).name: (BASE / f).read_text() for f in generator["files"]}
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}}
            | {"data": data}
        )
    return docs


@functools.cache
def _built(target: str) -> tuple[Doc, ...]:
    tool = _kustomize()
    if tool is None:
        if target != "base":
            pytest.skip("no kustomize or kubectl here: the overlay is not built (patches checked)")
        return tuple(load_base())
    out = subprocess.run(
        [*tool, str(KUBE / target)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


@pytest.fixture(params=BUILDS)
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    return list(_built(request.param))


def of_kind(docs: list[Doc], *kinds: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in kinds]


def by_name(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in of_kind(docs, kind)}


# -- the pods the manifests make -------------------------------------------------------


@dataclasses.dataclass
class Pod:
    owner: str  # "StatefulSet/rtms", "RedisFailover/livecomments", ...
    name: str
    labels: dict[str, str]
    spec: Doc  # a pod spec (operators' pods: only their containers' ports)
    claims: frozenset[str] = frozenset()  # a StatefulSet's volumeClaimTemplates

    @property
    def containers(self) -> list[Doc]:
        return list(self.spec.get("containers", []))

    def port(self, port: int | str) -> bool:
        """Whether a container of this pod has this port (by name or number)."""
        return any(
            port in (p.get("name"), p["containerPort"])
            for c in self.containers
            for p in c.get("ports", ())
        )


def _operator_pods(doc: Doc) -> list[Pod]:
    """The pods an operator makes for its custom resource, with their documented labels."""
    name = doc["metadata"]["name"]

    def pod(component: str, labels: dict[str, str], port: int) -> Pod:
        spec = {"containers": [{"name": component, "ports": [{"containerPort": port}]}]}
        return Pod(f"{doc['kind']}/{name}", f"{name}-{component}", labels, spec)

    if doc["kind"] == "RedisFailover":  # spotahome: rfr-<name>, rfs-<name>
        common = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "redis-failover"}
        return [
            pod("redis", common | {"app.kubernetes.io/component": "redis"}, 6379),
            pod("sentinel", common | {"app.kubernetes.io/component": "sentinel"}, 26379),
        ]
    if doc["kind"] == "PerconaServerMongoDB":
        common = {
            "app.kubernetes.io/name": "percona-server-mongodb",
            "app.kubernetes.io/instance": name,
        }
        return [
            pod(c, common | {"app.kubernetes.io/component": c}, 27017)
            for c in ("mongos", "mongod", "cfg")
        ]
    raise AssertionError(f"unknown custom resource {doc['kind']}")


def pods(docs: list[Doc]) -> list[Pod]:
    """Every pod the manifests make: one per StatefulSet ordinal (with the labels
    the StatefulSet controller adds), one per other workload, the operators' pods."""
    found: list[Pod] = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "StatefulSet":
            template = doc["spec"]["template"]
            for i in range(doc["spec"].get("replicas", 1)):
                labels = dict(template["metadata"]["labels"])
                labels["statefulset.kubernetes.io/pod-name"] = f"{name}-{i}"
                labels["apps.kubernetes.io/pod-index"] = str(i)
                claims = frozenset(
                    c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", ())
                )
                found.append(Pod(f"{kind}/{name}", f"{name}-{i}", labels, template["spec"], claims))
        elif kind in ("Deployment", "Job"):
            template = doc["spec"]["template"]
            labels = dict(template["metadata"]["labels"])
            found.append(Pod(f"{kind}/{name}", name, labels, template["spec"]))
        elif (doc["apiVersion"], kind) in CUSTOM_KINDS:
            found += _operator_pods(doc)
    return found


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector: ``matchLabels``/``matchExpressions``, or a Service's plain map."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", ()):
        key, op, values = expression["key"], expression["operator"], expression.get("values")
        value = labels.get(key)
        if op == "In":
            ok = value in values
        elif op == "NotIn":
            ok = value not in values
        else:
            ok = (key in labels) == (op == "Exists")
        if not ok:
            return False
    return True


def selected(docs: list[Doc], selector: Mapping[str, Any]) -> list[Pod]:
    return [pod for pod in pods(docs) if matches(selector, pod.labels)]


def our_containers(docs: list[Doc]) -> Iterator[tuple[Pod, Doc]]:
    """The containers running the livecomments image, with their pod."""
    for pod in pods(docs):
        for container in pod.containers:
            if "livecomments" in container.get("image", "").rsplit("/", 1)[-1]:
                yield pod, container


# -- a container's environment ---------------------------------------------------------

_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def environment(docs: list[Doc], pod: Pod, container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet makes it: envFrom, then env with
    field references filled in (a pod address for status.podIP) and $(VAR) expanded."""
    maps = by_name(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", ()):
        assert "configMapRef" in source, "only ConfigMaps are used as envFrom sources"
        ref = source["configMapRef"]["name"]
        assert ref in maps, f"{pod.name}: envFrom names a missing ConfigMap {ref}"
        env.update(maps[ref].get("data", {}))
    fields = {"metadata.name": pod.name, "status.podIP": "10.1.2.3"}
    for var in container.get("env", ()):
        if "value" in var:
            for ref in _REF.findall(var["value"]):
                assert ref in env, f"{pod.name}: {var['name']} uses $({ref}), not defined before it"
            env[var["name"]] = _REF.sub(lambda m: env[m.group(1)], var["value"])
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            assert ref["name"] in maps, f"{pod.name}: {var['name']} names ConfigMap {ref['name']}"
            data = maps[ref["name"]].get("data", {})
            assert ref["key"] in data, f"{pod.name}: ConfigMap {ref['name']} has no {ref['key']}"
            env[var["name"]] = data[ref["key"]]
        else:
            raise AssertionError(f"{pod.name}: {var['name']}: an env source the test does not know")
    return env


def server_command(container: Doc) -> str:
    command = container.get("command", [])
    assert command[:1] == ["livecomments"], f"{container['name']}: command {command}"
    return str(command[1])


def settings_of(docs: list[Doc], pod: Pod, container: Doc) -> cfg.BackendSettings:
    """The container's settings, loaded by the code from its environment (files
    named by *_FILE are secrets the test does not have: left out)."""
    cls, _ = SERVERS[server_command(container)]
    env = environment(docs, pod, container)
    return cfg.load(cls, environ={k: v for k, v in env.items() if not k.endswith("_FILE")})


# -- the code's routes -----------------------------------------------------------------


def _string_calls(path: Path, attribute: str) -> set[str]:
    """First string arguments of every ``*.attribute("...")`` call in a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == attribute
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def _compared_paths(path: Path) -> set[str]:
    """The ``path == "..."`` literals of a module (the RTMS listener's routes)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Name)
            and node.left.id == "path"
            and isinstance(node.ops[0], ast.Eq)
            and isinstance(node.comparators[0], ast.Constant)
        ):
            found.add(str(node.comparators[0].value))
    return found


@functools.cache
def routes() -> dict[tuple[str, str], frozenset[str]]:
    """(command, named port) -> the GET paths its listener serves, from the code."""
    package = ROOT / "livecomments"
    admin = frozenset(_string_calls(package / "kernel" / "admin.py", "add_get"))
    api = build_app(cfg.CommentServiceSettings()).router.resources()
    assert admin and api
    return {
        ("rtms", "admin"): admin,
        ("dispatcher", "admin"): admin,
        ("comment-service", "admin"): admin,
        ("rtms", "sse"): frozenset(_compared_paths(package / "rtms" / "sse.py")),
        ("comment-service", "https"): frozenset(r.canonical for r in api),
    }


def named_port(container: Doc, port: int | str) -> str:
    for p in container.get("ports", ()):
        if port in (p.get("name"), p["containerPort"]):
            return str(p["name"])
    raise AssertionError(f"{container['name']}: no container port {port!r}")


# -- the tests -------------------------------------------------------------------------


def test_manifests_validate_against_the_kubernetes_schemas(docs: list[Doc]) -> None:
    custom = set()
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM_KINDS:
            custom.add(key)
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
    assert custom == CUSTOM_KINDS


def test_the_base_loader_builds_what_kustomize_builds() -> None:
    if _kustomize() is None:
        pytest.skip("no kustomize or kubectl here to compare with")

    def key(doc: Doc) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    built = {key(doc): doc for doc in _built("base")}
    assert {key(doc): doc for doc in load_base()} == built


def test_overlay_patches_target_resources_of_the_base() -> None:
    base = {(d["kind"], d["metadata"]["name"]) for d in load_base()}
    overlay = yaml.safe_load((PRODUCTION / "kustomization.yaml").read_text())
    added: set[tuple[str, str]] = set()
    for name in overlay["resources"]:
        if not (PRODUCTION / name).is_dir():
            added |= {(d["kind"], d["metadata"]["name"]) for d in _load_yaml(PRODUCTION / name)}
    targets = set()
    for patch in overlay["patches"]:
        if "path" in patch:
            targets |= {
                (d["kind"], d["metadata"]["name"]) for d in _load_yaml(PRODUCTION / patch["path"])
            }
        else:
            targets.add((patch["target"]["kind"], patch["target"]["name"]))
    assert targets and targets <= base, targets - base
    assert not added & base, f"the overlay redefines {added & base}"
    workloads = {name for kind, name in base if kind in ("StatefulSet", "Deployment")}
    assert {r["name"] for r in overlay.get("replicas", ())} <= workloads
    images = {c["image"].split(":")[0] for _, c in our_containers(load_base())}
    assert {i["name"] for i in overlay.get("images", ())} <= images


def test_workload_selectors_match_their_pod_templates(docs: list[Doc]) -> None:
    for doc in of_kind(docs, "Deployment", "StatefulSet"):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert matches(doc["spec"]["selector"], labels), doc["metadata"]["name"]
    for doc in of_kind(docs, "StatefulSet"):
        assert doc["spec"]["serviceName"] in by_name(docs, "Service")


def test_services_select_pods_on_ports_they_have(docs: list[Doc]) -> None:
    for service in of_kind(docs, "Service"):
        name = service["metadata"]["name"]
        chosen = selected(docs, service["spec"]["selector"])
        assert chosen, f"Service {name} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            missing = [pod.name for pod in chosen if not pod.port(target)]
            assert not missing, f"Service {name}: {missing} have no port {target!r}"


def test_every_rtms_pod_has_its_own_public_service(docs: list[Doc]) -> None:
    """The 307 names one node: each RTMS pod needs a public address of its own."""
    public = [s for s in of_kind(docs, "Service") if s["spec"].get("type") == "LoadBalancer"]
    reached: dict[str, list[str]] = {}
    for service in public:
        for pod in selected(docs, service["spec"]["selector"]):
            reached.setdefault(pod.name, []).append(service["metadata"]["name"])
    rtms = [p.name for p in pods(docs) if p.owner == "StatefulSet/rtms"]
    for name in rtms:
        assert len(reached.get(name, [])) == 1, f"{name} reached by {reached.get(name)}"
        service = by_name(docs, "Service")[reached[name][0]]
        host = service["metadata"]["annotations"]["external-dns.alpha.kubernetes.io/hostname"]
        pod = next(p for p in pods(docs) if p.name == name)
        env = environment(docs, pod, pod.containers[0])
        assert env["LIVECOMMENTS_PUBLIC_URL"] == f"https://{host}", name


def test_network_policies_select_pods_and_their_ports(docs: list[Doc]) -> None:
    for policy in of_kind(docs, "NetworkPolicy"):
        name = policy["metadata"]["name"]
        chosen = selected(docs, policy["spec"]["podSelector"])
        assert chosen, f"NetworkPolicy {name} selects no pod"
        for rule in policy["spec"].get("ingress", ()):
            for port in rule.get("ports", ()):
                # A rule's ports apply to every pod it selects; each must be some pod's.
                assert any(p.port(port["port"]) for p in chosen), f"{name}: port {port['port']}"
            for peer in rule.get("from", ()):
                if "namespaceSelector" in peer or "ipBlock" in peer:
                    continue  # other namespaces (monitoring, operators): not ours to check
                assert selected(docs, peer["podSelector"]), f"{name}: a peer selects no pod"


def test_only_the_public_ports_are_open_to_everyone(docs: list[Doc]) -> None:
    """The gRPC ports, the admin listeners and the backends: every rule naming
    them names its sources; and every pod of ours and of the backends is covered."""
    public = {("rtms", "sse"), ("comment-service", "https")}
    covered = set()
    for policy in of_kind(docs, "NetworkPolicy"):
        name = policy["metadata"]["name"]
        for pod in selected(docs, policy["spec"]["podSelector"]):
            covered.add(pod.owner)
            component = pod.labels.get("app.kubernetes.io/component", "")
            for rule in policy["spec"].get("ingress", ()):
                if rule.get("from"):
                    continue
                opened = {(component, str(p["port"])) for p in rule.get("ports", ())}
                assert rule.get("ports") and opened <= public, f"{name} opens {opened} to all"
    for pod in pods(docs):
        if not pod.owner.startswith("Job/"):
            assert pod.owner in covered, f"no NetworkPolicy covers {pod.owner}"


def test_autoscalers_and_budgets_target_workloads(docs: list[Doc]) -> None:
    workloads = {
        (d["kind"], d["metadata"]["name"]) for d in of_kind(docs, "Deployment", "StatefulSet")
    }
    scaled = set()
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in workloads, hpa["metadata"]["name"]
        assert 0 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        scaled.add(ref["name"])
        if ref["name"] == "comment-service":
            # One Snowflake worker id per comment-service process.
            assert hpa["spec"]["maxReplicas"] <= ids.MAX_WORKER + 1
    assert scaled == {"dispatcher", "comment-service"}
    budgeted = set()
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        owners = {p.owner for p in selected(docs, pdb["spec"]["selector"])}
        assert len(owners) == 1, f"PDB {pdb['metadata']['name']} selects {owners or 'nothing'}"
        budgeted |= owners
    assert {"StatefulSet/rtms", "Deployment/dispatcher", "Deployment/comment-service"} <= budgeted


def test_env_names_are_settings_the_code_reads(docs: list[Doc]) -> None:
    known = cfg.known_variables()
    seen = set()
    for pod, container in our_containers(docs):
        for name in environment(docs, pod, container):
            if name.startswith(cfg.ENV_PREFIX):
                seen.add(name)
                assert name in known, f"{pod.name}: {name} is read by no process"
    assert "LIVECOMMENTS_JWT_SECRET_FILE" in seen and "LIVECOMMENTS_NODE_ID" in seen


def test_settings_load_from_the_manifests_and_match_the_ports(docs: list[Doc]) -> None:
    for pod, container in our_containers(docs):
        command = server_command(container)
        settings = settings_of(docs, pod, container)
        _, fields = SERVERS[command]
        names = {p["name"] for p in container["ports"]}
        assert names == set(fields), f"{pod.name}: ports {names}"
        for p in container["ports"]:
            assert getattr(settings, fields[p["name"]]) == p["containerPort"], (pod.name, p)
        # Addresses others dial (published in ZooKeeper, metrics URLs): never 0.0.0.0.
        published = ["admin_host"] + (["grpc_host"] if command == "rtms" else [])
        published += ["host"] if command == "dispatcher" else []
        for field in published:
            assert getattr(settings, field) == "10.1.2.3", f"{pod.name}: {field}"
        if command == "rtms":
            assert isinstance(settings, cfg.RTMSSettings)
            assert settings.node_id == pod.name


def test_probes_ask_paths_the_listeners_serve(docs: list[Doc]) -> None:
    for pod, container in our_containers(docs):
        command = server_command(container)
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container[kind]["httpGet"]
            port = named_port(container, probe["port"])
            served = routes()[(command, port)]
            assert probe["path"] in served, f"{pod.name} {kind}: {probe['path']} not in {served}"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_config_and_secret_references_exist(docs: list[Doc]) -> None:
    maps, secrets = by_name(docs, "ConfigMap"), by_name(docs, "Secret")
    for pod in pods(docs):
        for volume in pod.spec.get("volumes", ()):
            if "secret" in volume:
                source, name = secrets, volume["secret"]["secretName"]
                items = volume["secret"].get("items", ())
            elif "configMap" in volume:
                source, name = maps, volume["configMap"]["name"]
                items = volume["configMap"].get("items", ())
            else:
                continue
            assert name in source, f"{pod.name}: volume {volume['name']} names missing {name}"
            data = source[name].get("data", {}) | source[name].get("stringData", {})
            for item in items:
                assert item["key"] in data, f"{pod.name}: {name} has no key {item['key']}"
        volumes = {v["name"] for v in pod.spec.get("volumes", ())} | pod.claims
        for container in pod.containers:
            mounted = {m["name"] for m in container.get("volumeMounts", ())}
            assert mounted <= volumes, f"{pod.name}: mounts {mounted - volumes}"
    for doc in of_kind(docs, "RedisFailover"):
        assert doc["spec"]["auth"]["secretPath"] in secrets
    for doc in of_kind(docs, "PerconaServerMongoDB"):
        for user in doc["spec"]["users"]:
            ref = user["passwordSecretRef"]
            assert ref["key"] in secrets[ref["name"]]["stringData"], user["name"]


def _mounted_files(pod: Pod, container: Doc) -> set[str]:
    volumes = {v["name"]: v for v in pod.spec.get("volumes", ())}
    files = set()
    for mount in container.get("volumeMounts", ()):
        volume = volumes[mount["name"]]
        source = volume.get("secret") or volume.get("configMap") or {}
        for item in source.get("items", ()):
            files.add(f"{mount['mountPath']}/{item['path']}")
    return files


def test_files_the_settings_name_are_mounted(docs: list[Doc]) -> None:
    """*_FILE secrets, certificates and keys: each path is a file of a mounted volume."""
    path_settings = {"GRPC_CA", "GRPC_CERT", "GRPC_KEY", "TLS_CERT", "TLS_KEY"}
    for pod, container in our_containers(docs):
        files = _mounted_files(pod, container)
        env = environment(docs, pod, container)
        for name, value in env.items():
            setting = name.removeprefix(cfg.ENV_PREFIX)
            if name.endswith("_FILE") or setting in path_settings:
                assert value in files, f"{pod.name}: {name}={value} is not a mounted file"


def test_commands_and_hooks_are_cli_commands(docs: list[Doc]) -> None:
    for pod, container in our_containers(docs):
        command = server_command(container)
        assert command in cli.commands and command in SERVERS, f"{pod.name}: {command}"
        lifecycle = container.get("lifecycle", {})
        drain_wait = None
        for hook in lifecycle.values():
            script = hook["exec"]["command"]
            assert script[:2] == ["sh", "-c"], script
            words = shlex.split(script[2])
            for i, word in enumerate(words):
                if word != "livecomments":
                    continue
                name = words[i + 1]
                assert name in cli.commands, f"{pod.name}: livecomments {name}"
                options = {o for p in cli.commands[name].params for o in p.opts}
                for option in words[i + 2 :]:
                    if option.startswith("--"):
                        assert option in options, f"livecomments {name} has no {option}"
                if name == "drain":
                    drain_wait = float(words[words.index("--wait") + 1])
        if command == "rtms":
            # The pod must outlive the drain, the shutdown delay and the stop.
            assert drain_wait is not None, "RTMS pods drain before they stop"
            delay = settings_of(docs, pod, container).shutdown_delay
            grace = pod.spec["terminationGracePeriodSeconds"]
            assert grace >= drain_wait + delay + 20, f"{pod.name}: grace {grace}s"


def test_the_shard_setup_script_is_the_deploy_one() -> None:
    copy = (BASE / "shard-setup.js").read_text()
    assert copy == (ROOT / "deploy" / "mongo" / "shard-setup.js").read_text()


def test_the_image_is_multi_stage_non_root_with_the_cli_as_entry_point() -> None:
    lines = [
        line.strip()
        for line in CONTAINERFILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages = [line for line in lines if line.upper().startswith("FROM ")]
    assert len(stages) >= 2
    final = lines[lines.index(stages[-1]) :]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    uid = int(users[-1].split(":")[0])
    entry = [line for line in final if line.upper().startswith("ENTRYPOINT ")]
    assert entry == ['ENTRYPOINT ["livecomments"]']
    for pod, _ in our_containers(load_base()):
        assert pod.spec["securityContext"]["runAsUser"] == uid, pod.name
