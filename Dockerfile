# One image for all three services; compose.yaml picks each service's command.
#
# The build needs no network: the project and its dependencies are installed as wheels
# from a wheelhouse made on the host beforehand (build/ is git-ignored):
#
#   pip wheel . -w build/wheelhouse          # xpemu + trio, msgpack, structlog, rich, crc32c, ...
#   docker build --network none --build-arg BASE_IMAGE=xpemu-base:bookworm -t xpemu:local .
#
# BASE_IMAGE: any Debian-like image with python3 (3.11, matching the wheelhouse) and its
# venv module: the official slim image by default, or the local image docker/base-image.sh
# builds with debootstrap when no image registry is reachable.
# Only classic Dockerfile syntax is used, so the legacy builder (docker-compose v1) works.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=build/wheelhouse
# What to install from the wheelhouse (e.g. a pinned "xpemu==0.1.0").
ARG XPEMU_REQUIREMENT=xpemu
COPY ${WHEELHOUSE}/ /wheels/
# A venv: Debian's own python3 is "externally managed" (PEP 668) and refuses a system pip
# install; the venv works the same on the official image.
RUN set -eux; \
    python3 -m venv /opt/xpemu; \
    /opt/xpemu/bin/python -m pip install --no-index --find-links /wheels \
        --no-cache-dir --disable-pip-version-check ${XPEMU_REQUIREMENT}; \
    /opt/xpemu/bin/python -m pip check
# The classic builder keeps this stage's result as an untagged image; a label lets whoever
# built it find and remove it (tests/compose does, with a unique id per build).
ARG XPEMU_BUILD_ID=
LABEL org.xpemu.build-id="${XPEMU_BUILD_ID}"

# Same base, so the venv's python symlink resolves; the wheels stay in the build stage.
FROM ${BASE_IMAGE}
ARG XPEMU_UID=10001
ENV VIRTUAL_ENV=/opt/xpemu \
    PATH=/opt/xpemu/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# /run/xpemu (sockets) and /var/lib/xpemu (pager store) are owned by the service user:
# an empty named volume mounted there inherits that ownership and mode.
RUN set -eux; \
    useradd --uid "${XPEMU_UID}" --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin xpemu; \
    install -d -o "${XPEMU_UID}" -g "${XPEMU_UID}" -m 0750 /run/xpemu /var/lib/xpemu
COPY --from=build /opt/xpemu /opt/xpemu
USER ${XPEMU_UID}:${XPEMU_UID}
WORKDIR /var/lib/xpemu
STOPSIGNAL SIGTERM
# Healthy once hv answers on its sockets (`xpemu status` exits 0 then).
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/xpemu/bin/xpemu", "status", "--run-dir", "/run/xpemu", "--json"]
CMD ["python", "-m", "hv", "--run-dir", "/run/xpemu"]
