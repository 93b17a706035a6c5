"""A wheel built with `pip wheel .` runs on its own: installed in a fresh venv (no checkout on its
path), `mergeopt db upgrade` finds the migrations inside the package and `mergeopt serve` starts.

No downloads: the wheel is built without build isolation and installed with --no-deps; the fresh
venv sees this venv's site-packages (torch and the rest) through a .pth line, which adds the folder
without running its .pth files, so this checkout's editable install stays out of the way."""

from __future__ import annotations

import os
import shutil
import site
import socket
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head() -> str:
    """The checkout's newest migration (what the wheel's upgrade must reach)."""
    from alembic.script import ScriptDirectory

    from service.db.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _source_copy(dst: Path) -> Path:
    """The files a build reads, copied, so the build writes nothing into the shared checkout."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    for pkg in ("contract", "optimizer", "evaluators", "service"):
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    return dst


def test_wheel_installs_and_serves(tmp_path):
    src = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(wheels)], check=True, timeout=120)
    (wheel,) = wheels.glob("mergeopt-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_outer_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, timeout=120)

    work = tmp_path / "work"  # cwd: no checkout, no .env
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGEOPT_") and k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    run = lambda *args: subprocess.run([str(py), *args], cwd=work, env=env, capture_output=True,  # noqa: E731
                                       text=True, timeout=120)

    where = run("-c", "import service.db.migrate as m; print(m.__file__); print(m.migrations_dir())")
    assert where.returncode == 0, where.stderr
    module_file, migrations = where.stdout.split()
    assert Path(module_file).is_relative_to(env_dir) and Path(migrations).is_relative_to(env_dir)
    assert (Path(migrations) / "env.py").is_file() and list((Path(migrations) / "versions").glob("0001_*.py"))

    mergeopt = str(env_dir / "bin" / "mergeopt")
    url = f"sqlite:///{work}/wheel.db"
    up = subprocess.run([mergeopt, "db", "upgrade", "--db", url], cwd=work, env=env, capture_output=True,
                        text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert f"revision {_head()}" in up.stdout

    port = _free_port()
    server = subprocess.Popen([mergeopt, "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port),
                               "--db", url], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    status = resp.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, server.stderr.read() if server.poll() is not None else "no answer in 90 s"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
