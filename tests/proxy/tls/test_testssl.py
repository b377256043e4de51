"""testssl.sh against the TLS frontend (HttpProxy + TlsStore): protocols and cipher
categories only, the quick part. The full audit is bench/tls_audit.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.proxy.tls.helpers import run

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")

pytestmark = [pytest.mark.needs_tool, pytest.mark.slow,
              pytest.mark.skipif(TESTSSL is None, reason="needs testssl.sh")]

WEAK = ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
        "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_OBSOLETED")


async def test_no_protocol_below_tls12_and_no_weak_cipher(front_factory: Any,
                                                          tmp_path: Path) -> None:
    front = await front_factory()
    out = tmp_path / "testssl.json"
    assert TESTSSL is not None
    _, text = await run(
        TESTSSL, "--quiet", "--color", "0", "--warnings", "batch", "--ip", "127.0.0.1",
        "--jsonfile", str(out), "--protocols", "--std",
        f"https://www.example.com:{front.port}/app/", timeout=120)
    findings = {f["id"]: f["finding"] for f in json.loads(out.read_text())}
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert findings[old] == "not offered", (old, text)
    assert findings["TLS1_2"] == "offered"
    assert findings["TLS1_3"].startswith("offered")
    for weak in WEAK:
        if weak in findings:
            assert findings[weak] == "not offered", (weak, text)
    assert findings["cipherlist_STRONG"] == "offered"
    assert findings["ALPN"] == "http/1.1"
