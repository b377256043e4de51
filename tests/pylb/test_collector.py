"""pylb.collector.tune: the cyclic collector's thresholds in a serving process."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylb import collector


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@pytest.mark.usefixtures("thresholds")
def test_tune_raises_the_young_threshold_and_keeps_the_older_ones() -> None:
    gc.set_threshold(700, 7, 9)
    collector.tune()
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 7, 9)
    collector.tune()  # again: the same
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 7, 9)
    assert collector.YOUNG_THRESHOLD > 700


# What the process's loop would run is replaced by a report of the thresholds it starts
# with (app.main and workers.worker_main tune before their loop starts).
_PROBE = """
import gc, sys, uvloop
from pylb import app, cli, workers
def report(coro):
    coro.close()
    print(gc.get_threshold()[0])
uvloop.run = report
settings = cli.settings_from_args(cli.build_parser().parse_args(
    ["run", "--source=file:" + sys.argv[2], "--workers=1"]))
if sys.argv[1] == "controller":
    app.main(settings)
else:
    workers.worker_main(0, settings, None)
"""


@pytest.mark.parametrize("process", ["controller", "worker"])
def test_serving_processes_start_their_loop_tuned(process: str, tmp_path: Path) -> None:
    manifests = tmp_path / "cluster.yaml"
    manifests.write_text("")
    out = subprocess.run([sys.executable, "-c", _PROBE, process, str(manifests)],
                         capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.split() == [str(collector.YOUNG_THRESHOLD)]
