"""Fixtures around the fake API server: import them into a test module by name.

``from tests.kube.fixtures import apiserver_fixture, kube_fixture, kubeconfig_fixture``
makes the fixtures ``apiserver``, ``kubeconfig`` and ``kube`` (a real
:class:`~vpcbus_runtime.kube.KubeClient` configured by that kubeconfig) available. A module
whose services outlive one test imports ``module_apiserver_fixture`` and
``module_kubeconfig_fixture`` instead: the same two, one per module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.kube.apiserver import FakeApiServer
from vpcbus_runtime.kube import KubeClient


@pytest.fixture(name="apiserver")
def apiserver_fixture() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(name="kubeconfig")
def kubeconfig_fixture(apiserver: FakeApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture(name="apiserver", scope="module")
def module_apiserver_fixture() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(name="kubeconfig", scope="module")
def module_kubeconfig_fixture(
    apiserver: FakeApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return apiserver.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@pytest.fixture(name="kube")
async def kube_fixture(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    client = KubeClient.from_config(str(kubeconfig))
    yield client
    await client.close()
