"""The README's "Deploy on a cluster" commands, replayed offline in the order written:
every object they apply lands in a namespace that exists by then, every secret the
DaemonSet mounts exists by then, and the image step edits the kustomization it names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import kustomize

ROOT = Path(__file__).resolve().parents[2]
# Namespaces every cluster has; everything else must be created first.
BUILTIN_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "Node",
                  "CustomResourceDefinition", "PersistentVolume", "StorageClass"}


def deploy_commands(readme: str) -> list[list[str]]:
    """The shell commands of the "Deploy on a cluster" section, comments dropped, the
    variables it sets (`REGISTRY=...`) expanded."""
    section = readme.split("## Deploy on a cluster", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, "no sh block in the deploy section"
    env: dict[str, str] = {}
    out = []
    for block in blocks:
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if len(argv) == 1 and re.fullmatch(r"[A-Z_]+=\S+", argv[0]):
                name, _, value = argv[0].partition("=")
                env[name] = value
            elif argv:
                # bash drops the backslash of a `\$` in double quotes; shlex keeps it
                out.append([re.sub(r"\$([A-Z_]+)\b", lambda m: env[m.group(1)], a)
                            .replace("\\$", "$") for a in argv])
    return out


def _objects(kind_of_apply: str, target: str) -> list[dict[str, Any]]:
    path = ROOT / target
    assert path.exists(), f"the README applies {target}, which is not in the repository"
    if kind_of_apply == "-k":
        return kustomize.build(path)
    return kustomize.load(path)


def replay(commands: list[list[str]]) -> list[str]:
    """What goes wrong, in order, when the commands run one after another."""
    namespaces = set(BUILTIN_NAMESPACES)
    secrets: set[tuple[str, str]] = set()
    problems: list[str] = []
    for argv in commands:
        if argv[:1] != ["kubectl"]:
            continue
        ns = argv[argv.index("-n") + 1] if "-n" in argv else "default"
        verb = [a for i, a in enumerate(argv[1:], 1) if argv[i - 1] != "-n" and a != "-n"]
        if verb[:2] == ["create", "namespace"]:
            namespaces.add(verb[2])
        elif verb[:2] == ["create", "secret"]:
            if ns not in namespaces:
                problems.append(f"{shlex.join(argv)}: namespace {ns} does not exist yet")
            secrets.add((ns, verb[3]))
        elif verb[:1] == ["apply"]:
            flag, target = verb[1], verb[2]
            objs = _objects(flag, target)
            # kubectl applies a kustomization's Namespaces first; a file's, in order
            created = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
            for o in objs:
                if o["kind"] in CLUSTER_SCOPED:
                    continue
                o_ns = o["metadata"].get("namespace", ns)
                if o_ns not in namespaces | created:
                    problems.append(f"kubectl apply {flag} {target}: {o['kind']} "
                                    f"{o['metadata']['name']} in namespace {o_ns}, which "
                                    "does not exist yet")
                if o["kind"] == "Secret":
                    secrets.add((o_ns, o["metadata"]["name"]))
            for o in objs:
                if o["kind"] != "DaemonSet":
                    continue
                o_ns = o["metadata"].get("namespace", ns)
                for v in o["spec"]["template"]["spec"].get("volumes", []):
                    name = v.get("secret", {}).get("secretName")
                    if name and (o_ns, name) not in secrets:
                        problems.append(f"kubectl apply {flag} {target}: the DaemonSet "
                                        f"mounts secret {name}, not created yet")
            namespaces |= created
    return problems


def test_the_readme_deploys_in_an_order_that_works() -> None:
    commands = deploy_commands((ROOT / "README.md").read_text())
    applied = [c for c in commands if c[:2] == ["kubectl", "apply"]]
    assert len(applied) >= 2
    assert replay(commands) == []


def test_the_replay_catches_the_old_order() -> None:
    """The order the README had: the secret before the kustomization creating its
    namespace (and the certificate's DaemonSet before its secret)."""
    old = [["kubectl", "-n", "pylb-system", "create", "secret", "generic", "pylb-tls",
            "--from-file=crt.pem=x.pem"], ["kubectl", "apply", "-k", "deploy/base/"]]
    assert [p for p in replay(old) if "namespace pylb-system does not exist" in p]
    assert replay([["kubectl", "apply", "-k", "deploy/tls/"]]) == [
        "kubectl apply -k deploy/tls/: the DaemonSet mounts secret pylb-tls, not created yet"]


@pytest.mark.parametrize("alternative", ["deploy/base/", "deploy/client-ca/"])
def test_the_alternatives_the_readme_names_exist(alternative: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"`{alternative}`" in readme
    assert kustomize.build(ROOT / alternative)


def test_the_image_step_edits_the_kustomization() -> None:
    commands = deploy_commands((ROOT / "README.md").read_text())
    built = next(c for c in commands if c[:2] == ["docker", "build"])
    pushed = next(c for c in commands if c[:2] == ["docker", "push"])
    image = built[built.index("-t") + 1]
    assert pushed[2] == image
    sed = next(c for c in commands if c[:2] == ["sed", "-i"])
    m = re.fullmatch(r"s\|(.+)\|(.+)\|", sed[2])
    assert m, sed
    target = ROOT / sed[3]
    text = target.read_text()
    pattern = m.group(1)
    assert len(re.findall(pattern, text, re.M)) == 1, f"{pattern} in {target}"
    edited = re.sub(pattern, m.group(2), text, flags=re.M)
    images = yaml.safe_load(edited)["images"]
    name, _, tag = image.partition(":")
    assert {"name": "pylb", "newName": name, "newTag": tag} in images
