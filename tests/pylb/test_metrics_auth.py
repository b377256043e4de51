"""--metrics-auth: /metrics with the stats password (default) or open, the rest of the
stats page keeping its password either way."""

from __future__ import annotations

import pytest

from pylb.cli import build_parser, settings_from_args
from pylb.config import MetricsAuth, Settings
from pylb.stats import StatsServer
from tests.pylb.stats_fixtures import known_view
from tests.pylb.test_stats_server import get


@pytest.mark.parametrize("mode,metrics_without_password", [
    (MetricsAuth.STATS, 401), (MetricsAuth.NONE, 200)])
async def test_metrics_auth(mode: MetricsAuth, metrics_without_password: int) -> None:
    srv = StatsServer(Settings(stats_auth="admin:s3cret", metrics_auth=mode), known_view)
    host, port = await srv.start("127.0.0.1", 0)
    base = f"http://{host}:{port}"
    try:
        assert (await get(base + "/metrics", auth=None))[0] == metrics_without_password
        assert (await get(base + "/metrics"))[0] == 200  # the password always works
        for path in ("/", "/;csv", "/;json", "/nope"):
            assert (await get(base + path, auth=None))[0] == 401
        assert (await get(base + "/metrics", auth=("admin", "wrong")))[0] == (
            401 if mode is MetricsAuth.STATS else 200)
    finally:
        await srv.close()


def test_the_flag() -> None:
    def parse(*argv: str) -> Settings:
        return settings_from_args(build_parser().parse_args(["run", *argv]))

    assert parse().metrics_auth is MetricsAuth.STATS  # today's behaviour stays the default
    assert parse("--metrics-auth=none").metrics_auth is MetricsAuth.NONE
    with pytest.raises(SystemExit):
        parse("--metrics-auth=open")
