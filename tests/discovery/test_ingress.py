"""Table-driven tests of discovery.ingress: class selection, rules, TLS hosts, skips."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from discovery.filesource import FileSource
from discovery.ingress import CLASS_ANNOTATION, CONTROLLER, DEFAULT_CLASS_ANNOTATION
from discovery.translate import KubeObjects, translate
from pylb.config import Settings
from pylb.model import HttpRoute, PathMatch, RouteTable
from tests.discovery.test_translate import ep, eps, svc

N = "nginx.ingress.kubernetes.io/"


def iclass(name: str = "pylb", controller: str = CONTROLLER,
           default: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if default:
        meta["annotations"] = {DEFAULT_CLASS_ANNOTATION: "true"}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": meta,
            "spec": {"controller": controller}}


def backend(service: str, port: int | str = 80) -> dict[str, Any]:
    key = "number" if isinstance(port, int) else "name"
    return {"service": {"name": service, "port": {key: port}}}


def path(p: str, service: str = "web", port: int | str = 80,
         kind: str = "Prefix") -> dict[str, Any]:
    return {"path": p, "pathType": kind, "backend": backend(service, port)}


def ing(name: str, rules: list[Any] | None = None, ns: str = "default",
        cls: str | None = "pylb", annotations: dict[str, Any] | None = None,
        **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations is not None:
        meta["annotations"] = annotations
    body: dict[str, Any] = {"rules": rules or [], **spec}
    if cls is not None:
        body["ingressClassName"] = cls
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
            "spec": body}


def rule(host: str | None, *paths: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"http": {"paths": list(paths)}}
    if host is not None:
        out["host"] = host
    return out


SERVICES = (svc("web", [{"port": 80, "name": "http", "targetPort": 8080}]),
            svc("api", [{"port": 8000, "name": "grpc"}, {"port": 9000, "name": "admin"}]))
SLICES = (eps("web", [ep("127.0.0.1")], [{"port": 8080, "name": "http"}]),
          eps("api", [ep("127.0.0.2")], [{"port": 8000, "name": "grpc"},
                                         {"port": 9000, "name": "admin"}]))


def run(ingresses: list[Any], classes: list[Any] | None = None,
        services: tuple[Any, ...] = SERVICES, **settings: Any) -> RouteTable:
    settings.setdefault("ingress_class", "pylb")
    return translate(KubeObjects(services, SLICES, (), {}, tuple(ingresses),
                                 tuple(classes if classes is not None else [iclass()])),
                     Settings(**settings))


def ingress_routes(table: RouteTable, tls: bool = False) -> list[HttpRoute]:
    return [r for r in (table.https if tls else table.http) if r.match is not PathMatch.LEGACY]


def skips(table: RouteTable) -> list[str]:
    return [f"{s.name}: {s.reason}" for s in table.skipped if s.kind == "Ingress"]


# -- selection -------------------------------------------------------------------------------

SELECTION = [
    # (ingress kwargs, classes, served?, skipped reason fragment)
    ({"cls": "pylb"}, [iclass()], True, None),
    ({"cls": "nginx"}, [iclass(), iclass("nginx", "k8s.io/ingress-nginx")], False, None),
    ({"cls": "pylb"}, [], False, "IngressClass pylb does not exist"),
    ({"cls": "pylb"}, [iclass("pylb", "k8s.io/ingress-nginx")], False, "names controller"),
    ({"cls": None}, [iclass()], False, None),  # no class, ours not default
    ({"cls": None}, [iclass(default=True)], True, None),
    ({"cls": None}, [iclass("pylb", "other.io/x", default=True)], False, None),
    ({"cls": None, "annotations": {CLASS_ANNOTATION: "pylb"}}, [], True, None),
    ({"cls": None, "annotations": {CLASS_ANNOTATION: "nginx"}}, [iclass(default=True)],
     False, None),
    ({"cls": "pylb", "annotations": {CLASS_ANNOTATION: "nginx"}}, [iclass()], True, None),
]


@pytest.mark.parametrize(("kwargs", "classes", "served", "reason"), SELECTION)
def test_selection(kwargs: dict[str, Any], classes: list[Any], served: bool,
                   reason: str | None) -> None:
    table = run([ing("i", [rule("a.test", path("/"))], **kwargs)], classes)
    assert bool(ingress_routes(table)) is served
    if reason is None:
        assert skips(table) == []
    else:
        assert any(reason in s for s in skips(table)), skips(table)


def test_no_ingress_class_flag_means_no_ingresses() -> None:
    table = run([ing("i", [rule("a.test", path("/"))])], ingress_class=None)
    assert ingress_routes(table) == [] and skips(table) == []


def test_unwatched_namespace_ignored() -> None:
    table = run([ing("i", [rule("a.test", path("/"))], ns="other")])
    assert ingress_routes(table) == []


# -- rules -----------------------------------------------------------------------------------


def test_rules_and_backends_by_number_and_name() -> None:
    table = run([ing("i", [
        rule("A.Test", path("/", "web", 80), path("/api", "api", "grpc", "Exact")),
        rule("*.wild.test", path("/x/", "api", 9000, "ImplementationSpecific")),
        rule(None, path("/all", "web", "http")),
    ])])
    got = {(r.host, r.prefix, r.match, r.backend) for r in ingress_routes(table)}
    assert got == {
        ("a.test", "/", PathMatch.PREFIX, "default/web:80"),
        ("a.test", "/api", PathMatch.EXACT, "default/api:8000"),
        ("*.wild.test", "/x", PathMatch.PREFIX, "default/api:9000"),
        (None, "/all", PathMatch.PREFIX, "default/web:80"),
    }
    assert [s.address for s in table.backend("default/api:9000").servers] == ["127.0.0.2"]
    assert [s.port for s in table.backend("default/web:80").servers] == [8080]
    assert all(not r.strip_prefix for r in ingress_routes(table))


def test_default_backend_first_ingress_wins() -> None:
    table = run([ing("b", defaultBackend=backend("api", 8000)),
                 ing("a", defaultBackend=backend("web"))])
    (default,) = [r for r in table.http if r.match is PathMatch.DEFAULT]
    assert default.backend == "default/web:80" and default.name == "default/a"
    assert any("already Ingress default/a's" in s for s in skips(table))


BAD = [
    (rule("a.test", {"path": "/", "pathType": "Prefix",
                     "backend": {"resource": {"kind": "Bucket", "name": "b"}}}),
     "pylb forwards to services only"),
    (rule("a.test", path("/", kind="Regex")), "is not Exact, Prefix"),
    (rule("a.test", path("relative")), "is not an absolute path"),
    (rule("bad_host!", path("/")), "is not a DNS name"),
    (rule("a.*.test", path("/")), "is not a DNS name"),
    (rule("a.test", {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "web", "port": {}}}}),
     "needs a number or a name"),
    ("not a rule", "is not an object"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD)
def test_bad_parts_skipped_with_reason_others_kept(bad: Any, reason: str) -> None:
    table = run([ing("i", [bad, rule("good.test", path("/"))])])
    assert [r.host for r in ingress_routes(table)] == ["good.test"]
    assert any(reason in s for s in skips(table)), skips(table)


@pytest.mark.parametrize("obj", [
    {"kind": "Ingress"}, {"metadata": {"name": "x", "namespace": "default"},
                          "spec": {"ingressClassName": "pylb", "rules": "nope"}},
    {"metadata": {"name": "x", "namespace": "default"}, "spec": {"ingressClassName": "pylb",
                                                                 "tls": [{"hosts": 3}]}},
    "junk", None, 7,
])
def test_malformed_ingress_never_raises(obj: Any) -> None:
    table = run([obj, ing("ok", [rule("ok.test", path("/"))])])
    assert [r.host for r in ingress_routes(table)] == ["ok.test"]


def test_missing_service_or_port_answers_503_with_reason() -> None:
    table = run([ing("i", [rule("a.test", path("/", "nope", 80), path("/p", "web", 81))])])
    assert table.backend("default/nope:80").servers == ()
    assert table.backend("default/web:81").servers == ()
    reasons = skips(table)
    assert any("service default/nope does not exist" in s for s in reasons)
    assert any("has no port 81" in s for s in reasons)


def test_same_path_two_ingresses_first_wins() -> None:
    table = run([ing("b", [rule("a.test", path("/x", "api", 8000))]),
                 ing("a", [rule("a.test", path("/x", "web"))])])
    (route,) = ingress_routes(table)
    assert route.backend == "default/web:80"
    assert any("already taken by Ingress default/a" in s for s in skips(table))


def test_backend_shared_with_the_services_own_route() -> None:
    table = run([ing("i", [rule("a.test", path("/"))])])
    legacy = [r for r in table.http if r.match is PathMatch.LEGACY and r.name == "web"]
    assert legacy and legacy[0].backend == "default/web:80"
    assert table.backend("default/web:80").servers


def test_cloud_load_balancer_service_reachable_through_ingress() -> None:
    services = (svc("web", [{"port": 80, "name": "http", "targetPort": 8080}],
                    type="LoadBalancer"),)
    table = run([ing("i", [rule("a.test", path("/"))])], services=services)
    assert [s.port for s in table.backend("default/web:80").servers] == [8080]


# -- TLS hosts and redirects -----------------------------------------------------------------


def test_tls_hosts_served_on_tls_and_redirected() -> None:
    table = run([ing("i", [rule("a.test", path("/")), rule("b.test", path("/"))],
                     tls=[{"hosts": ["a.test"], "secretName": "a-tls"}])])
    plain = {r.host: r.ssl_redirect for r in ingress_routes(table)}
    assert plain == {"a.test": True, "b.test": False}
    assert [r.host for r in ingress_routes(table, tls=True)] == ["a.test"]


def test_rules_without_host_and_default_backend_served_on_both_ports() -> None:
    # ingress-nginx's catch-all server `_` listens on 80 and 443 (default certificate)
    table = run([ing("i", [rule(None, path("/any")), rule("a.test", path("/"))],
                     defaultBackend=backend("web"))])
    plain = {(r.host, r.prefix, r.match): r.ssl_redirect for r in ingress_routes(table)}
    assert plain == {(None, "/any", PathMatch.PREFIX): False,
                     ("a.test", "/", PathMatch.PREFIX): False,
                     (None, "/", PathMatch.DEFAULT): False}
    assert {(r.host, r.prefix, r.match) for r in ingress_routes(table, tls=True)} == {
        (None, "/any", PathMatch.PREFIX), (None, "/", PathMatch.DEFAULT)}


def test_ssl_redirect_off_and_force() -> None:
    off = run([ing("i", [rule("a.test", path("/"))], annotations={N + "ssl-redirect": "false"},
                   tls=[{"hosts": ["a.test"], "secretName": "s"}])])
    assert [r.ssl_redirect for r in ingress_routes(off)] == [False]
    assert len(ingress_routes(off, tls=True)) == 1
    force = run([ing("i", [rule("a.test", path("/"))],
                     annotations={N + "force-ssl-redirect": "true"})])
    assert [r.ssl_redirect for r in ingress_routes(force)] == [True]
    assert len(ingress_routes(force, tls=True)) == 1


def test_input_order_and_duplicates_do_not_matter() -> None:
    objs = [ing("a", [rule("a.test", path("/"))]), ing("b", [rule("a.test", path("/"))]),
            ing("c", defaultBackend=backend("web"))]
    one = run(objs)
    two = run(list(reversed(objs)) + objs)
    assert one == two
    assert one.render() == two.render()


def tls_secret(name: str, ns: str = "default", kind: str = "kubernetes.io/tls") -> Any:
    pem = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nx\n").decode()
    return {"apiVersion": "v1", "kind": "Secret", "type": kind,
            "metadata": {"name": name, "namespace": ns},
            "data": {"tls.crt": pem, "tls.key": pem}}


def test_tls_secrets_become_table_certificates() -> None:
    ings = [ing("b", [rule("b.test", path("/"))],
                tls=[{"hosts": ["b.test", "*.w.test"], "secretName": "b-tls"}]),
            ing("a", [rule("a.test", path("/"))],
                tls=[{"hosts": ["a.test"], "secretName": "missing"},
                     {"hosts": ["c.test"], "secretName": "opaque"}])]
    table = translate(KubeObjects(SERVICES, SLICES, (), {}, tuple(ings), (iclass(),),
                                  (tls_secret("b-tls"), tls_secret("opaque", kind="Opaque"),
                                   tls_secret("b-tls", ns="other"))),
                      Settings(ingress_class="pylb"))
    assert [(c.source, c.hosts) for c in table.certs] == [("default/b-tls",
                                                           ("*.w.test", "b.test"))]
    reasons = skips(table)
    assert "a: TLS secret missing: Secret not found; its hosts get the default " \
           "certificate" in reasons
    assert any("TLS secret opaque: type is 'Opaque'" in s for s in reasons)
    assert "certificate default/b-tls for *.w.test b.test" in table.render()


# -- ingress-nginx annotations ---------------------------------------------------------------


def test_rewrite_target_makes_regex_paths() -> None:
    table = run([ing("i", [rule("a.test", path("/s(/|$)(.*)", kind="ImplementationSpecific"),
                                path("/e", kind="Exact"))],
                     annotations={N + "rewrite-target": "/$2"})])
    got = {(r.prefix, r.match, r.rewrite) for r in ingress_routes(table)}
    assert got == {("/s(/|$)(.*)", PathMatch.REGEX, "/$2"), ("/e", PathMatch.EXACT, "/$2")}


def test_use_regex_bad_regex_skipped() -> None:
    table = run([ing("i", [rule("a.test", path("/(", kind="Prefix"), path("/ok.*"))],
                     annotations={N + "use-regex": "true"})])
    assert [r.prefix for r in ingress_routes(table)] == ["/ok.*"]
    assert any("not a regular expression" in s for s in skips(table))


@pytest.mark.parametrize("protocol", ["GRPC", "H2C", "grpc"])
def test_backend_protocol_grpc_speaks_h2c_on_its_own_backend(protocol: str) -> None:
    table = run([ing("i", [rule("a.test", path("/"))],
                     annotations={N + "backend-protocol": protocol}),
                 ing("j", [rule("b.test", path("/"))],
                     annotations={N + "backend-protocol": "HTTP"})])
    by_host = {r.host: r.backend for r in ingress_routes(table)}
    assert by_host == {"a.test": "default/web:80@default/i", "b.test": "default/web:80"}
    assert table.backend("default/web:80@default/i").h2c is True
    assert table.backend("default/web:80").h2c is False
    assert table.backend("default/web:80@default/i").servers == \
        table.backend("default/web:80").servers


def test_affinity_and_load_balance_get_their_own_backend() -> None:
    table = run([ing("i", [rule("a.test", path("/"))], annotations={
        N + "affinity": "cookie", N + "session-cookie-name": "route",
        N + "load-balance": "ewma"}), ing("j", [rule("b.test", path("/"))])])
    by_host = {r.host: r.backend for r in ingress_routes(table)}
    assert by_host == {"a.test": "default/web:80@default/i", "b.test": "default/web:80"}
    own = table.backend("default/web:80@default/i")
    assert (own.affinity.value, own.cookie_name, own.algorithm.value) == (
        "cookie", "route", "leastconn")
    assert own.servers == table.backend("default/web:80").servers
    default_cookie = run([ing("i", [rule("a.test", path("/"))],
                              annotations={N + "affinity": "cookie"})])
    assert default_cookie.backend("default/web:80@default/i").cookie_name == "INGRESSCOOKIE"


def test_permanent_redirect_and_app_root() -> None:
    table = run([ing("i", [rule("old.test", path("/"))],
                     annotations={N + "permanent-redirect": "https://new.test/"}),
                 ing("j", [rule("app.test", path("/"))], annotations={N + "app-root": "/app"})])
    got = {(r.host, r.prefix, r.match, r.redirect, r.redirect_code)
           for r in ingress_routes(table)}
    assert got == {("old.test", "/", PathMatch.PREFIX, "https://new.test/", 301),
                   ("app.test", "/", PathMatch.EXACT, "/app", 302),
                   ("app.test", "/", PathMatch.PREFIX, None, 301)}


@pytest.mark.parametrize(("ann", "reason"), [
    ({N + "whitelist-source-range": "10.0.0.0/8"}, "open to every address"),
    ({N + "allowlist-source-range": "10.0.0.0/8"}, "open to every address"),
    ({N + "ssl-passthrough": "true"}, "TLS passthrough is per TCP port"),
    ({N + "backend-protocol": "HTTPS"}, "plain HTTP/1.1 or h2c to backends"),
    ({N + "backend-protocol": "GRPCS"}, "plain HTTP/1.1 or h2c to backends"),
    ({N + "backend-protocol": "FCGI"}, "plain HTTP/1.1 or h2c to backends"),
    ({N + "affinity": "ip"}, "is not cookie"),
    ({N + "load-balance": "chash"}, "is not round_robin"),
    ({N + "ssl-redirect": "maybe"}, 'expected "true" or "false"'),
    ({N + "permanent-redirect-code": "418"}, "is not 301"),
])
def test_refused_annotations_skip_the_ingress(ann: dict[str, str], reason: str) -> None:
    table = run([ing("i", [rule("a.test", path("/"))], annotations=ann),
                 ing("j", [rule("b.test", path("/"))])])
    assert [r.host for r in ingress_routes(table)] == ["b.test"]
    assert any(s.startswith("i: ") and reason in s for s in skips(table)), skips(table)


def test_ignored_annotations_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    objs = [ing("ign", [rule("a.test", path("/"))], annotations={
        N + "proxy-body-size": "8m", N + "backend-protocol": "HTTP",
        N + "configuration-snippet": "more_set_headers x;"})]
    with caplog.at_level(logging.INFO, logger="pylb.discovery"):
        for _ in range(3):
            table = run(objs)
    assert [r.host for r in ingress_routes(table)] == ["a.test"]
    lines = [r.getMessage() for r in caplog.records if "is ignored" in r.getMessage()]
    assert sorted(lines) == [
        "Ingress default/ign: annotation nginx.ingress.kubernetes.io/configuration-snippet "
        "is ignored (not supported by pylb)",
        "Ingress default/ign: annotation nginx.ingress.kubernetes.io/proxy-body-size is "
        "ignored (not supported by pylb)"]


def test_file_source_reads_ingresses(tmp_path: Path) -> None:
    """`--source file:` with `--ingress-class`: the manifests of an ingress-nginx set, with
    the Services and an IngressClass, as `pylb run --dry` prints them."""
    manifests = (Path(__file__).parent / "manifests" / "ingress-nginx-shop.yaml").read_text()
    extra = yaml.safe_dump_all([
        iclass(),
        svc("storefront", [{"port": 80, "name": "http", "targetPort": 8080}]),
        svc("api", [{"port": 8000, "name": "grpc"}, {"port": 9000, "name": "admin"}]),
        tls_secret("shop-tls")])
    path = tmp_path / "cluster.yaml"
    path.write_text(manifests + "---\n" + extra)
    source = FileSource(str(path), Settings(ingress_class="pylb"))
    table = source.load()
    hosts = {r.host for r in ingress_routes(table)}
    assert hosts == {"shop.example.com", "www.shop.example.com", "admin.example.com",
                     "*.blog.example.com", None}
    assert [c.source for c in table.certs] == ["default/shop-tls"]
    without = FileSource(str(path), Settings()).load()  # no --ingress-class: no Ingresses
    assert ingress_routes(without) == [] and without.certs == ()
