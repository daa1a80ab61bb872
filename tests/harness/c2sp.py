"""notecheck, the Go reference check of C2SP signed notes and tlog inclusion proofs (tools/c2sp), for the
interop tests: built by scripts/build-c2sp-tools into $AUDIT_SHIPPER_CACHE/bin on first use.

- `notecheck_path()` / the `notecheck` fixture (session): the binary's path. A build that fails raises
  `C2spBuildError` with the build's output: these tests never skip for want of the tool.
- `run_notecheck(binary, *args)`: runs it; the CompletedProcess (text), whatever the exit status.
"""
from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-c2sp-tools"


class C2spBuildError(RuntimeError):
    """scripts/build-c2sp-tools failed, or left no binary; carries the build's output."""


def cache_dir() -> Path:
    return Path(os.environ.get("AUDIT_SHIPPER_CACHE") or Path.home() / ".cache" / "audit-shipper")


@functools.cache
def notecheck_path() -> Path:
    """The built notecheck. The script runs once per process: a no-op when the binary is current, a
    few seconds' build when tools/c2sp changed, under a minute cold."""
    result = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise C2spBuildError(f"{BUILD_SCRIPT} failed ({result.returncode}):\n{result.stdout[-4000:]}")
    path = cache_dir() / "bin" / "notecheck"
    if not os.access(path, os.X_OK):
        raise C2spBuildError(f"{BUILD_SCRIPT} ran but {path} is missing:\n{result.stdout[-4000:]}")
    return path


def run_notecheck(binary: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def notecheck() -> Path:
    return notecheck_path()
