"""The file source: parsing manifests, reload on change (including a Kubernetes-style
symlink swap), parse errors that keep the last good table, and a missing file."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from discovery.filesource import FileSource, FileSourceError, objects_from_yaml
from pylb.config import KubeSettings, Settings
from pylb.model import RouteTable

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"

# A bound on waiting for the poller, never a timing assertion: a slow machine only waits.
WAIT = 20.0


def service(name: str, port: int = 80, ns: str | None = None) -> str:
    namespace = f"\n  namespace: {ns}" if ns else ""
    return f"""apiVersion: v1
kind: Service
metadata:
  name: {name}{namespace}
spec:
  ports:
    - port: {port}
"""


def slice_(service_name: str, *addresses: str, port: int = 8080) -> str:
    eps = "".join(f"\n  - addresses: [{a}]" for a in addresses)
    return f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service_name}-x
  labels:
    kubernetes.io/service-name: {service_name}
addressType: IPv4
ports:
  - port: {port}
endpoints:{eps}
"""


def docs(*parts: str) -> str:
    return "---\n".join(parts)


def prefixes(table: RouteTable) -> list[str]:
    return [r.prefix for r in table.http]


def test_multi_document_list_kinds_and_default_namespace(
        caplog: pytest.LogCaptureFixture) -> None:
    text = docs(
        service("a"),
        "apiVersion: v1\nkind: List\nitems:\n"
        "  - {apiVersion: v1, kind: Service, metadata: {name: b, namespace: default},"
        " spec: {ports: [{port: 81}]}}\n"
        "  - {apiVersion: v1, kind: Endpoints, metadata: {name: b},"
        " subsets: [{addresses: [{ip: 10.0.0.2}], ports: [{port: 81}]}]}\n"
        "  - {apiVersion: v1, kind: Pod, metadata: {name: p}}\n"
        "  - just a string\n",
        slice_("a", "10.0.0.1"),
        service("c", ns="other"),
        "",  # an empty document
        "- not an object\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
    )
    objs = objects_from_yaml(text, Settings())
    assert [s["metadata"]["name"] for s in objs.services] == ["a", "b"]
    assert [s["metadata"]["namespace"] for s in objs.services] == ["default", "default"]
    assert [e["metadata"]["namespace"] for e in objs.endpoints] == ["default"]
    assert len(objs.endpointslices) == 1
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2
    everything = objects_from_yaml(text, Settings(namespaces=()))
    assert [s["metadata"]["name"] for s in everything.services] == ["a", "b", "c"]
    only_other = objects_from_yaml(text, Settings(namespaces=("other",)))
    assert [s["metadata"]["name"] for s in only_other.services] == ["c"]
    assert only_other.endpointslices == () and only_other.endpoints == ()


def test_load_translates(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(docs(service("a"), slice_("a", "10.0.0.1", "10.0.0.2")))
    table = FileSource(str(f), Settings()).load()
    assert prefixes(table) == ["/a"]
    assert [s.key for s in table.backend("default/a:80").servers] == [
        ("10.0.0.1", 8080), ("10.0.0.2", 8080)]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileSourceError, match=r"nope\.yaml: no such file"):
        FileSource(str(tmp_path / "nope.yaml"), Settings()).load()


def test_directory_and_binary_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileSourceError, match="cannot read"):
        FileSource(str(tmp_path), Settings()).load()
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FileSourceError, match="not UTF-8"):
        FileSource(str(f), Settings()).load()


@pytest.mark.parametrize(("text", "line"), [
    ("kind: Service\nmetadata:\n  name: [unclosed\n", 4),
    ("a: 1\nb: 2\n  c: 3\n", 3),
    ("kind: Service\n---\nkey: 'unterminated\n", 4),
    ("\tkind: Service\n", 1),
])
def test_parse_error_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(FileSourceError) as info:
        FileSource(str(f), Settings()).load()
    assert info.value.line == line
    assert f"bad.yaml:{line}: YAML error" in str(info.value)


def test_example_cluster_renders_the_expected_table() -> None:
    """(Settings() checks every backend, as `pylb run` does with a file source: the
    backend lines say `check`.)"""
    table = FileSource(str(EXAMPLE), Settings(tcp_services=(("mysql", 3306),))).load()
    assert table.render() == """\
# route table v0
frontend http
    route /nginxsvc:443 -> default/nginxsvc:443
    route /nginxsvc -> default/nginxsvc:80
    route /hostsvc -> default/hostsvc:80 host=www.example.com
    route /test -> default/testsvc:80 -i no-strip
frontend https
    route /secure -> default/secure:80
frontend tcp :3306 mysql -> default/mysql:3306
backend default/hostsvc:80 balance=roundrobin affinity=client-ip check
    server 127.0.0.1:18087 (host-0) ready
backend default/mysql:3306 balance=leastconn check
    server 127.0.0.1:18085 (mysql-0) ready
backend default/nginxsvc:443 balance=roundrobin check
    server 127.0.0.1:18083 (nginx-a) ready
    server 127.0.0.1:18084 (nginx-b) ready
backend default/nginxsvc:80 balance=roundrobin check
    server 127.0.0.1:18081 (nginx-a) ready
    server 127.0.0.1:18082 (nginx-b) ready
    server 127.0.0.1:18089 (nginx-c) draining
backend default/secure:80 balance=roundrobin affinity=cookie cookie=SERVERID check
    server 127.0.0.1:18088 (secure-0) ready
backend default/testsvc:80 balance=roundrobin check
    server 127.0.0.1:18086 (test-0) ready
skipped default/cloudsvc: type LoadBalancer is served by a cloud load balancer (set \
spec.loadBalancerClass: pylb.io/lb to have pylb serve it)
skipped default/syslog: port 514/UDP: only TCP is balanced
"""


# -- run(): watching the file -------------------------------------------------------------------


class Running:
    """A FileSource.run() task and the tables it published."""

    def __init__(self, source: FileSource) -> None:
        self.source = source
        self.published: asyncio.Queue[RouteTable] = asyncio.Queue()
        self.task = asyncio.create_task(source.run(self.published.put_nowait))

    async def next(self) -> RouteTable:
        return await asyncio.wait_for(self.published.get(), WAIT)

    async def polls(self, n: int) -> None:
        """Let the poller run at least n more times (to show nothing is published)."""
        for _ in range(n):
            await asyncio.sleep(self.source.poll_interval)
            await asyncio.sleep(0)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[FileSource], Running]]:
    started: list[Running] = []

    def start(source: FileSource) -> Running:
        r = Running(source)
        started.append(r)
        return r

    yield start
    for r in started:
        r.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await r.task


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as editors and kubectl cp do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_run_publishes_and_reloads_on_change(
        tmp_path: Path, running: Callable[[FileSource], Running]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(docs(service("a"), slice_("a", "10.0.0.1")))
    source = FileSource(str(f), Settings(), poll_interval=0.01)
    assert not source.synced
    r = running(source)
    first = await r.next()
    assert (first.version, prefixes(first), source.synced) == (1, ["/a"], True)

    write(f, docs(service("a"), slice_("a", "10.0.0.1", "10.0.0.2")))
    second = await r.next()
    assert second.version == 2
    assert len(second.backend("default/a:80").servers) == 2

    # in place, not atomically: same inode
    with open(f, "w") as fh:
        fh.write(docs(service("a"), service("b")))
    third = await r.next()
    assert (third.version, prefixes(third)) == (3, ["/a", "/b"])


async def test_a_reload_shares_unchanged_backends(
        tmp_path: Path, running: Callable[[FileSource], Running]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(docs(service("a"), slice_("a", "127.1.0.1"), service("b"),
                      slice_("b", "127.1.0.2")))
    r = running(FileSource(str(f), Settings(), poll_interval=0.01))
    first = await r.next()
    write(f, docs(service("new"), service("a"), slice_("a", "127.1.0.1"), service("b"),
                  slice_("b", "127.1.0.3")))
    second = await r.next()
    assert second.backend("default/a:80") is first.backend("default/a:80")
    assert second.backend("default/b:80") is not first.backend("default/b:80")
    assert [s.address for s in second.backend("default/b:80").servers] == ["127.1.0.3"]
    assert second.get_backend("default/new:80") is not None


async def test_unchanged_table_is_not_republished(
        tmp_path: Path, running: Callable[[FileSource], Running]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(service("a"))
    r = running(FileSource(str(f), Settings(), poll_interval=0.01))
    assert (await r.next()).version == 1
    # Same objects, different text: the translated table is equal, nothing is published.
    write(f, "# a comment\n" + service("a"))
    os.utime(f, ns=(1, 1))  # an old mtime: not racy, so a reread is a real change
    await r.polls(10)
    write(f, service("b"))
    table = await r.next()
    assert (table.version, prefixes(table)) == (2, ["/b"])


async def test_kubernetes_symlink_swap(
        tmp_path: Path, running: Callable[[FileSource], Running]) -> None:
    # The layout of a ConfigMap volume: file -> ..data/file, ..data -> ..<timestamp>
    v1, v2 = tmp_path / "..2024_01_01_v1", tmp_path / "..2024_01_02_v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "cluster.yaml").write_text(service("old"))
    (v2 / "cluster.yaml").write_text(service("new"))
    for d in (v1, v2):
        os.utime(d / "cluster.yaml", ns=(10**18, 10**18))  # same times: the inode tells
    (tmp_path / "..data").symlink_to(v1.name)
    (tmp_path / "cluster.yaml").symlink_to("..data/cluster.yaml")
    r = running(FileSource(str(tmp_path / "cluster.yaml"), Settings(), poll_interval=0.01))
    assert prefixes(await r.next()) == ["/old"]
    (tmp_path / "..data_tmp").symlink_to(v2.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    table = await r.next()
    assert (table.version, prefixes(table)) == (2, ["/new"])


async def test_parse_error_keeps_last_table_and_logs_the_line(
        tmp_path: Path, running: Callable[[FileSource], Running],
        caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(service("a"))
    r = running(FileSource(str(f), Settings(), poll_interval=0.01))
    assert (await r.next()).version == 1
    write(f, service("a") + "  bad: [\n")
    for _ in range(int(WAIT / 0.01)):
        if any(rec.levelno == logging.ERROR for rec in caplog.records):
            break
        await asyncio.sleep(0.01)
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.ERROR]
    assert errors and "c.yaml:9: YAML error" in errors[0]
    assert "keeping route table v1" in errors[0]
    assert r.published.empty()
    write(f, service("fixed"))
    table = await r.next()
    assert (table.version, prefixes(table)) == (2, ["/fixed"])


async def test_a_broken_file_is_logged_once_per_change(
        tmp_path: Path, running: Callable[[FileSource], Running],
        caplog: pytest.LogCaptureFixture) -> None:
    """A file just written is racy (reread every poll while its mtime is recent): the same
    error on the same file is logged once, and again only when the file changes."""
    f = tmp_path / "c.yaml"
    f.write_text(service("a"))
    r = running(FileSource(str(f), Settings(), poll_interval=0.01))
    assert (await r.next()).version == 1

    def errors() -> list[str]:
        return [rec.getMessage() for rec in caplog.records if rec.levelno == logging.ERROR]

    write(f, service("a") + "  bad: [\n")
    for _ in range(int(WAIT / 0.01)):
        if errors():
            break
        await asyncio.sleep(0.01)
    await r.polls(20)  # all within the racy window: each poll rereads the file
    assert len(errors()) == 1 and "c.yaml:9: YAML error" in errors()[0]
    write(f, service("a") + "\n  worse: [\n")  # another change, still broken
    for _ in range(int(WAIT / 0.01)):
        if len(errors()) > 1:
            break
        await asyncio.sleep(0.01)
    await r.polls(20)
    assert len(errors()) == 2 and "c.yaml:10: YAML error" in errors()[1]
    assert r.published.empty()


async def test_file_gone_then_back(
        tmp_path: Path, running: Callable[[FileSource], Running],
        caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(service("a"))
    r = running(FileSource(str(f), Settings(), poll_interval=0.01))
    assert (await r.next()).version == 1
    f.unlink()

    def errors() -> list[str]:
        return [rec.getMessage() for rec in caplog.records if rec.levelno == logging.ERROR]

    for _ in range(int(WAIT / 0.01)):
        if errors():
            break
        await asyncio.sleep(0.01)
    await r.polls(10)
    assert r.published.empty()
    assert len(errors()) == 1 and "no such file" in errors()[0]  # once, not every poll
    write(f, service("b"))
    table = await r.next()
    assert (table.version, prefixes(table)) == (2, ["/b"])


async def test_run_raises_when_the_file_is_missing_at_start(tmp_path: Path) -> None:
    source = FileSource(str(tmp_path / "missing.yaml"), Settings(), poll_interval=0.01)
    with pytest.raises(FileSourceError, match="no such file"):
        await asyncio.wait_for(source.run(lambda t: None), WAIT)
    assert not source.synced


EXTERNAL = """apiVersion: v1
kind: Service
metadata: {name: rds}
spec:
  type: ExternalName
  externalName: db.example.com
  ports: [{port: 3306}]
"""


async def test_external_names_are_resolved_and_refreshed(
        tmp_path: Path, running: Callable[[FileSource], Running]) -> None:
    answers: dict[str, tuple[str, ...]] = {"db.example.com": ("192.0.2.1",)}

    async def resolver(name: str) -> tuple[str, ...]:
        if name not in answers:
            raise OSError("no such name")
        return answers[name]

    f = tmp_path / "c.yaml"
    f.write_text(EXTERNAL)
    settings = Settings(kube=KubeSettings(dns_interval=0.01, dns_timeout=WAIT))
    source = FileSource(str(f), settings, poll_interval=0.01, resolver=resolver)
    assert source.load().backend("default/rds:3306").servers == ()  # load() does no DNS
    r = running(source)
    table = await r.next()
    assert [s.key for s in table.backend("default/rds:3306").servers] == [
        ("192.0.2.1", 3306)]
    answers["db.example.com"] = ("192.0.2.2", "2001:db8::2")
    table = await r.next()
    assert table.version == 2
    assert [s.key for s in table.backend("default/rds:3306").servers] == [
        ("192.0.2.2", 3306), ("2001:db8::2", 3306)]
    del answers["db.example.com"]  # a failing lookup keeps the last answer
    await r.polls(10)
    assert r.published.empty()


async def test_a_failing_consumer_does_not_stop_the_source(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(service("a"))
    got: asyncio.Queue[RouteTable] = asyncio.Queue()

    def publish(table: RouteTable) -> None:
        if table.version == 1:
            raise RuntimeError("consumer bug")
        got.put_nowait(table)

    source = FileSource(str(f), Settings(), poll_interval=0.01)
    task = asyncio.create_task(source.run(publish))
    try:
        for _ in range(int(WAIT / 0.01)):
            if any("consumer bug" in (r.exc_text or "") or r.exc_info for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        assert not source.synced
        write(f, service("b"))
        table = await asyncio.wait_for(got.get(), WAIT)
        assert (table.version, prefixes(table), source.synced) == (2, ["/b"], True)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_unexpected_error_while_reading_keeps_the_source_running(
        tmp_path: Path, running: Callable[[FileSource], Running],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in parsing (anything but FileSourceError) is logged with its traceback; the
    last good table stays and the next change of the file is read again."""
    import discovery.filesource as fs

    f = tmp_path / "c.yaml"
    f.write_text(service("a"))
    r = running(FileSource(str(f), Settings(), poll_interval=0.01))
    assert (await r.next()).version == 1
    real = fs.objects_from_yaml

    def broken(*args: object, **kw: object) -> object:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(fs, "objects_from_yaml", broken)
    write(f, service("b"))
    for _ in range(int(WAIT / 0.01)):
        if any(rec.levelno == logging.ERROR for rec in caplog.records):
            break
        await asyncio.sleep(0.01)
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert errors and "keeping route table v1" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert r.published.empty()
    monkeypatch.setattr(fs, "objects_from_yaml", real)
    write(f, service("fixed"))
    table = await r.next()
    assert (table.version, prefixes(table)) == (2, ["/fixed"])
