"""The compose tests' image: built once per session, from a wheelhouse of this tree.

Skipped, with the reason, when no engine answers `docker info` or no base image is usable
(XPEMU_BASE_IMAGE unset and python:3.11-slim not a local image; docker/base-image.sh
builds one offline). Whatever the build made (image tag, build stage, wheelhouse) is
removed at the end of the session, on every path.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator

import pytest
from compose_helpers import (
    REPO,
    Deadline,
    Image,
    build_image,
    docker_or_skip,
    remove_image,
)

#: The wheelhouse and the image build, together (measured: 20-85 s here).
BUILD_BUDGET_S = 200.0


@pytest.fixture(scope="session")
def xpemu_image() -> Iterator[Image]:
    """The project image (tag `xpemu-test:<token>`), built once for all compose tests."""
    compose, base = docker_or_skip()
    token = secrets.token_hex(4)
    tag = f"xpemu-test:{token}"
    wheelhouse = REPO / "build" / f"wheelhouse-test-{token}"
    try:
        try:
            build_image(base, token, tag, wheelhouse, Deadline(BUILD_BUDGET_S))
        finally:
            shutil.rmtree(wheelhouse, ignore_errors=True)  # the image has what it needs
        yield Image(compose, base, tag)
    finally:
        remove_image(token, tag)  # the tag is unique: whatever exists under it is ours
