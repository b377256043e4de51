"""The README holds up word for word: what it links to and names is in the repository, and
every command it shows runs from a fresh clone as written (the venv's pylb, not a `pylb`
on the PATH)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOP = ("bench", "deploy", "docs", "examples", "pylb", "proxy", "discovery", "election",
       "tests", ".ci")


def test_links_point_into_the_repository() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    for link in links:
        if re.match(r"[a-z]+://", link) or link.startswith("#"):
            continue
        assert (ROOT / link.split("#")[0]).exists(), link
    assert "../" not in README, "nothing outside the repository"


def test_paths_it_names_exist() -> None:
    tops = "|".join(re.escape(t) for t in TOP)
    named = re.findall(rf"`((?:{tops})/[^`\s]*|Dockerfile|pyproject\.toml)`", README)
    assert len(named) > 10
    for path in named:
        assert (ROOT / path.rstrip(".,;:")).exists(), path


def _commands() -> list[list[str]]:
    out = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv and not re.fullmatch(r"[A-Z_]+=\S+", argv[0]):  # not `NODE=...`
                    out.append(argv)
    return out


# The programs the README's commands may start: the venv's, Debian's, a cluster's.
ALLOWED = {".venv/bin/pylb", ".venv/bin/python", ".venv/bin/pip", "python3", "kubectl",
           "docker", "sed", "curl", "mysql", "open"}


@pytest.mark.parametrize("argv", _commands(), ids=lambda a: " ".join(a)[:60])
def test_every_command_starts_a_program_a_fresh_clone_has(argv: list[str]) -> None:
    assert argv[0] in ALLOWED, f"{argv[0]}: not on a fresh machine's PATH"
    if argv[0] == "python3":
        assert argv[1:3] == ["-m", "venv"], "the system python3 only makes the venv"


def test_the_flags_the_readme_shows_are_pylbs() -> None:
    from pylb.cli import build_parser

    run = next(a for a in build_parser()._actions
               if a.dest == "command").choices["run"]  # type: ignore[attr-defined]
    known = {o for a in run._actions for o in a.option_strings}
    shown = set(re.findall(r"`(--[a-z-]+)[=` ]", README))
    elect_only = {"--http", "--id", "--ttl", "--lock"}
    demo_only = {"--port", "--tcp-port", "--duration", "--quick"}
    unknown = shown - known - elect_only - demo_only - {"--from-file"}
    assert not unknown, unknown


def test_ci_runs_the_readmes_test_command_in_the_readmes_venv_last() -> None:
    """.ci/run builds the README's venv, refuses a base interpreter that has pylb's
    packages (a test leaving the venv would then pass), and ends on the README's test
    command, so its last line is pytest's summary."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    test_command = next(" ".join(c) for c in _commands() if c[1:3] == ["-m", "pytest"])
    assert ci[-1] == f"exec {test_command}"
    assert test_command.startswith(".venv/bin/python ")
    assert any(line.startswith('"$python" -m venv') and line.endswith(" .venv") for line in ci)
    check = next(line for line in ci if line.startswith("for module in "))
    for module in ("h11", "uvloop", "aiohttp", "kubernetes_asyncio"):
        assert f" {module} " in check + " "
