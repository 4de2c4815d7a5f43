"""A real tritonserver (from the nvidia-pytriton wheel) on free loopback ports, for tests.

The wheel ships Triton 2.51 with only the Python backend. Its stub links the
system libpython; LD_LIBRARY_PATH must start with the running interpreter's
lib directory or the stub mixes two Pythons and fails at import. The stub
imports `antiphon` and the venv's packages through PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.eventually import eventually_sync

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if (root / "tritonserver" / "bin" / "tritonserver").is_file() else None


def require_triton() -> Path:
    """The pytriton package root, or skip (fail when ANTIPHON_REQUIRE_TRITON=1)."""
    root = pytriton_root()
    if root is None:
        message = "tritonserver not found: `.venv/bin/pip install --no-deps nvidia-pytriton==0.7.0`"
        if os.environ.get("ANTIPHON_REQUIRE_TRITON") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root


def stub_cwd(directory: Path) -> Path:
    """The stub's working directory, holding numpy<2 (from .venv-triton).

    The stub runs its interpreter isolated (PYTHONPATH and PYTHONHOME ignored, the
    compiled-in prefix whose site-packages may carry numpy 2), but sys.path[0] is its
    working directory, which it inherits from tritonserver: numpy found there wins.
    """
    directory.mkdir(parents=True)
    site = Path(stub_python_path().split(os.pathsep)[0])
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (directory / name).symlink_to(site / name)
    return directory


def stub_python_path() -> str:
    """sys.path entries for the Python-backend stub, which ignores PYTHONPATH.

    The stub of Triton 2.51 corrupts tensors with numpy 2 (its pybind11 reads numpy 1's
    array layout: every element reads as the first byte), so a small venv with only
    numpy<2 (.venv-triton) provides numpy (see stub_cwd); the rest comes from this interpreter.
    """
    stub_venv = Path(os.environ.get("ANTIPHON_TRITON_STUB_VENV", REPO / ".venv-triton"))
    numpy1 = stub_venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    if not (numpy1 / "numpy").is_dir():
        message = (
            f"no numpy<2 for the Triton stub in {numpy1}: "
            f"`python -m venv {stub_venv} && {stub_venv}/bin/pip install 'numpy<2'`"
        )
        if os.environ.get("ANTIPHON_REQUIRE_TRITON") == "1":
            pytest.fail(message)
        pytest.skip(message)
    paths = [str(numpy1), str(REPO / "server"), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return os.pathsep.join(dict.fromkeys(paths))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonServer:
    """`with TritonServer(repo) as t:` starts tritonserver and waits until it is ready."""

    def __init__(self, repository: Path, *, models: tuple[str, ...] = ()) -> None:
        self.repository = repository
        self.models = models  # empty: load every model of the repository
        self.grpc_port = free_port()
        self.http_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._work = Path(tempfile.mkdtemp(prefix="antiphon-triton-"))
        self.log_path = self._work / "tritonserver.log"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> TritonServer:
        root = require_triton()
        backends = self._work / "backends"
        shutil.copytree(root / "tritonserver" / "backends", backends)
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
        libs = root.parent / "nvidia_pytriton.libs"
        env = dict(os.environ)
        libdir = str(sysconfig.get_config_var("LIBDIR"))
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env["ANTIPHON_PYTHONPATH"] = stub_python_path()
        args = [
            str(root / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={root / 'tritonserver' / 'caches'}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--allow-metrics=false", "--log-verbose=0",
        ]  # fmt: skip
        if self.models:
            args.append("--model-control-mode=explicit")
            args += [f"--load-model={m}" for m in self.models]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=stub_cwd(self._work / "cwd")
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import urllib.error
        import urllib.request

        proc = self._proc
        assert proc is not None

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        try:
            eventually_sync(ready, timeout_s=READY_TIMEOUT_S, interval_s=0.1, message="tritonserver not ready")
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(f"{exc}:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from antiphon.inference.prepare_embedder import is_embedder_prepared
    from antiphon.inference.prepare_llm import is_llm_prepared
    from antiphon.inference.triton_repository import prepare_triton_repository
    from tests.integration.conftest import models_dir

    require_triton()
    models = models_dir()
    if not (is_llm_prepared(models) and is_embedder_prepared(models)):
        message = f"the LLM and embedder are not prepared in {models}: run `make models`"
        if os.environ.get("ANTIPHON_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return prepare_triton_repository(models, tmp_path_factory.mktemp("triton-repo"))


@pytest.fixture(scope="module")
def triton(triton_repository: Path) -> Iterator[TritonServer]:
    """A running tritonserver serving antiphon_llm and antiphon_embed, shared by a module's tests."""
    with TritonServer(triton_repository) as server:
        yield server
