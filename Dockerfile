# syntax=docker/dockerfile:1
# pylb: build a wheel with compilers available, install it into a slim image without them.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# Compilers only here, for any dependency without a wheel for this platform.
# Debian versions are not pinned: bookworm's archive drops superseded versions when a
# security update lands, so a pin would break the build; the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY pylb ./pylb
COPY proxy ./proxy
COPY discovery ./discovery
COPY election ./election
COPY bench ./bench
RUN python -m venv /opt/pylb \
    && /opt/pylb/bin/pip install --no-cache-dir --upgrade pip==24.3.1 \
    && /opt/pylb/bin/pip install --no-cache-dir '.[fast]'

FROM python:3.11-slim-bookworm
# tini is PID 1: it forwards SIGTERM to pylb (which then drains for --grace-period) and
# reaps the worker processes. libcap2-bin gives setcap, removed after use.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/pylb /opt/pylb
# A non-root user that can still bind 80 and 443: the capability sits on the interpreter.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pylb \
    && setcap cap_net_bind_service=+ep "$(readlink -f /opt/pylb/bin/python)" \
    && apt-get purge -y libcap2-bin && apt-get autoremove -y
ENV PATH=/opt/pylb/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001
EXPOSE 80 443 1936 8081
ENTRYPOINT ["/usr/bin/tini", "--", "pylb"]
CMD ["run"]
