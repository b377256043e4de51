"""What start-up checks before anything starts, and the errors that stop it.

A bad flag, a file that cannot be loaded, a cluster that is not there or a port that
cannot be listened on is one line naming the flag (`FlagError`, exit status 2); what fails
later in start-up is a `StartupError` (exit status 1). `pylb run` (pylb.cli) runs
check_cluster, check_files and check_ports before the controller starts; `pylb demo`
checks its ports; a worker rereads the error page on SIGHUP with load_error_page.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlparse

from pylb.config import Settings

# Where a pod finds its service account (kubernetes-asyncio reads the same place).
SERVICEACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class FlagError(Exception):
    """A flag's value is unusable; the message names the flag."""


class StartupError(Exception):
    """Start-up cannot go on; the message says what to fix."""


def load_error_page(value: str) -> bytes:
    """The page for --error-page: a file path or a file:// URL, read once at start-up."""
    if "://" in value:
        url = urlparse(value)
        if url.scheme != "file":
            raise FlagError(f"--error-page: only file paths and file:// URLs, got {value!r}")
        path = unquote(url.path)
    else:
        path = value
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise FlagError(f"--error-page: cannot read {path}: {e.strerror or e}") from None


def check_files(settings: Settings) -> None:
    """Load every file start-up would load and stop naming the flag and the file: the
    certificates (--ssl-cert) and the client CA (--ssl-ca-cert); --error-page is read by
    settings_from_args. Runs before any worker starts, and for --dry too."""
    if settings.tls.cert:
        from proxy.certs import CertificateError  # cryptography: only when there is TLS
        from proxy.tls import TlsStore

        try:
            TlsStore(replace(settings.tls, ca_cert=None))
        except CertificateError as e:  # its message starts with the file
            raise FlagError(f"--ssl-cert: {e}") from None
    ca = settings.tls.ca_cert
    if ca:
        try:
            ssl.create_default_context().load_verify_locations(cafile=ca)
        except ssl.SSLError as e:
            raise FlagError(f"--ssl-ca-cert: {ca}: no CA certificate in it "
                            f"({e.reason or e})") from None
        except OSError as e:
            raise FlagError(f"--ssl-ca-cert: {ca}: cannot read: {e.strerror or e}") from None


def check_cluster(settings: Settings, explicit: bool,
                  environ: Mapping[str, str] | None = None,
                  token: str = SERVICEACCOUNT_TOKEN) -> None:
    """With `--source kubernetes`, stop at once when there is no cluster to talk to, saying
    how to run without one. `explicit`: --use-kubernetes-cluster-service was given."""
    if settings.source != "kubernetes":
        return
    env = os.environ if environ is None else environ
    instead = "run on a file with --source file:PATH (e.g. examples/cluster.yaml)"
    if settings.use_cluster_service:
        if "KUBERNETES_SERVICE_HOST" not in env:
            why = "$KUBERNETES_SERVICE_HOST is not set: not in a pod"
        elif not os.path.exists(token):
            why = f"{token} does not exist: is automountServiceAccountToken false?"
        else:
            return
        raise FlagError(f"--use-kubernetes-cluster-service: no in-cluster service account "
                        f"was found ({why}); {instead}, or from a kubeconfig with "
                        "--use-kubernetes-cluster-service=false")
    path = settings.kubeconfig or env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if any(os.path.exists(os.path.expanduser(p)) for p in path.split(":") if p):
        return
    if explicit:
        raise FlagError(f"--use-kubernetes-cluster-service=false: no kubeconfig at {path}; "
                        f"name one with --kubeconfig PATH or $KUBECONFIG, or {instead}")
    raise FlagError("no cluster to watch: no in-cluster service account was found "
                    "($KUBERNETES_SERVICE_HOST is not set: not in a pod) and no kubeconfig at "
                    f"{path}; {instead}, or from a kubeconfig with --kubeconfig PATH or "
                    "$KUBECONFIG")


def listeners(settings: Settings) -> list[tuple[str, str, int]]:
    """(flag, address, port) of every socket `pylb run` listens on at start-up."""
    s = settings
    out = [("--http-port", s.bind, s.http_port), ("--stats-port", s.stats_bind, s.stats_port),
           ("--health-port", s.bind, s.health_port)]
    if s.tls.cert:  # without a certificate the TLS frontend opens later, if a service needs it
        out.append(("--https-port", s.bind, s.https_port))
    by_port: dict[int, list[str]] = {}
    for name, port in s.tcp_services:
        by_port.setdefault(port, []).append(name)
    out += [(f"--tcp-services {'+'.join(names)}:{port}", s.bind, port)
            for port, names in by_port.items()]
    return out


def check_ports(listen: Iterable[tuple[str, str, int]]) -> None:
    """Stop before anything starts when a port cannot be listened on, naming its flag. (A
    port taken between this check and the real bind still fails start-up, less nicely.)"""
    for flag, host, port in listen:
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    why = "is in use by another program"
                elif e.errno == errno.EACCES and port < 1024:
                    why = "needs root or CAP_NET_BIND_SERVICE (a port below 1024)"
                else:
                    why = f"cannot be listened on: {e.strerror or e}"
                option = flag.split()[0]
                raise FlagError(f"{flag}: port {port} on {host} {why}; choose another "
                                f"with {option}") from None
