"""The container image, checked without a Docker engine: the Dockerfile's stages and final-stage
contents, what .dockerignore lets into the build context, and the builder's steps replayed with pip —
the wheel builds, and installs with its dependencies from binary wheels only (no compiler) into a fresh
venv whose `shipper` entry point runs."""
from __future__ import annotations

import fnmatch
import hashlib
import json
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.kube import REPO_ROOT, cache_dir

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPILERS = ("gcc", "g++", "cc ", "clang", "build-essential", "make ", "rustc", "cargo", "python3-dev",
             "libc-dev", "libc6-dev")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, found {keyword}"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def resolve(base: str, args: dict[str, str]) -> str:
    for key, value in args.items():
        base = base.replace("${" + key + "}", value).replace("$" + key, value)
    return base


def test_two_stages_on_python_3_11_slim(dockerfile) -> None:
    args, stages = dockerfile
    assert [s.name for s in stages] == ["builder", None]
    assert [resolve(s.base, args) for s in stages] == ["python:3.11-slim", "python:3.11-slim"]


def test_builder_makes_a_wheel_and_installs_with_the_locked_constraints(dockerfile) -> None:
    builder = dockerfile[1][0]
    runs = " ".join(builder.all("RUN"))
    assert "pip wheel --no-deps" in runs
    assert "--constraint /tmp/constraints.txt" in runs and "--only-binary=:all:" in runs
    assert "python -m venv /opt/audit-shipper" in runs
    copied = " ".join(builder.all("COPY"))
    assert "constraints.txt" in copied and "shipper" in copied and "native" in copied and "setup.py" in copied
    # The native extension is compiled here, against OpenSSL's and snappy's headers, and checked to import.
    assert "gcc" in runs and "libssl-dev" in runs and "libsnappy-dev" in runs
    assert "n.ENABLED" in runs


def test_final_stage_holds_the_venv_and_no_build_tools(dockerfile) -> None:
    final = dockerfile[1][-1]
    copies = final.all("COPY")
    assert copies == ["--from=builder /opt/audit-shipper /opt/audit-shipper"]
    for run in final.all("RUN"):
        lowered = run.lower() + " "
        assert "pip " not in lowered, run
        if "apt-get install" in lowered:      # runtime libraries of the native extension, nothing else
            packages = lowered.split("apt-get install", 1)[1].split("&&")[0].split()
            assert [p for p in packages if not p.startswith("-")] == ["libsnappy1v5"], run
        for compiler in COMPILERS:
            assert compiler not in lowered, f"final stage mentions {compiler!r}: {run}"


def test_final_stage_runs_shipper_as_a_non_root_user(dockerfile) -> None:
    final = dockerfile[1][-1]
    users = final.all("USER")
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid == "10001"
    assert any("--uid 10001" in run for run in final.all("RUN"))
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["shipper"]
    assert json.loads(final.all("CMD")[-1]) == ["run"]
    env = " ".join(final.all("ENV"))
    assert "PATH=/opt/audit-shipper/bin:$PATH" in env


def test_entrypoint_console_script_exists() -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["shipper"] == "shipper.cli:main"
    installed = Path(sys.executable).with_name("shipper")
    assert installed.exists(), f"{installed} missing: the package is not installed in this venv"
    result = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "run" in result.stdout


def dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes. Patterns match the path or any
    of its parent directories."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if any(fnmatch.fnmatch(candidate, body) or fnmatch.fnmatch(candidate, body.replace("**/", ""))
               for candidate in candidates):
            allowed = negate
    return allowed


def test_dockerignore_sends_only_the_build_inputs() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "setup.py", "README.md", "constraints.txt", "shipper/cli.py",
                   "shipper/enrich/__init__.py", "native/seal.c", "native/buf.h"):
        assert dockerignore_allows(needed, patterns), needed
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/chart/test_image.py", "bench/run.py", ".hypothesis/x",
                     "charts/audit-shipper/values.yaml", "shipper/__pycache__/cli.cpython-311.pyc",
                     "shipper/_native.cpython-311-x86_64-linux-gnu.so"):
        assert not dockerignore_allows(unwanted, patterns), unwanted


# ------------------------------------------------------------------------- the builder, replayed with pip

def _pip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout)


def _skip_if_offline(result: subprocess.CompletedProcess, what: str) -> None:
    text = result.stdout + result.stderr
    if result.returncode != 0 and any(s in text for s in ("NewConnectionError", "Temporary failure in name resolution",
                                                          "Max retries exceeded", "Network is unreachable")):
        pytest.skip(f"{what} needs PyPI, unreachable here")


@pytest.fixture(scope="module")
def runtime_wheelhouse() -> Path:
    """Binary wheels of the runtime dependencies at the locked versions, cached by constraints.txt."""
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    locked = "\n".join(line for line in constraints.splitlines() if not line.startswith("-e "))
    digest = hashlib.sha256(locked.encode() + (REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    wheelhouse = cache_dir() / "wheelhouse" / digest
    done = wheelhouse / ".complete"
    if done.exists():
        return wheelhouse
    wheelhouse.mkdir(parents=True, exist_ok=True)
    (wheelhouse / "constraints.txt").write_text(locked + "\n")
    requirements = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # --only-binary: exactly what the image's builder does, proving no compiler is needed there.
    result = _pip("download", "--only-binary=:all:", "--dest", str(wheelhouse), "--constraint",
                  str(wheelhouse / "constraints.txt"), *requirements, timeout=600)
    _skip_if_offline(result, "downloading the runtime wheels")
    assert result.returncode == 0, result.stderr[-3000:]
    done.write_text("ok\n")
    return wheelhouse


def test_wheel_builds_and_installs_offline_into_a_fresh_venv(tmp_path: Path, runtime_wheelhouse: Path) -> None:
    dist = tmp_path / "dist"
    build = _pip("wheel", "--no-deps", "--wheel-dir", str(dist), str(REPO_ROOT), timeout=300)
    _skip_if_offline(build, "the wheel's build backend")
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = list(dist.glob("audit_shipper-*.whl"))
    assert len(wheels) == 1
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n == "shipper/cli.py" for n in names)
    assert any(n.startswith("shipper/_native.") and n.endswith(".so") for n in names), names
    assert not [n for n in names if n.startswith(("tests/", "charts/", "deploy/", "bench/"))]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # --no-compile: byte-compiling the kubernetes client alone takes longer than everything else here.
    install = _pip("--python", str(python), "install", "--no-compile", "--no-index",
                   "--find-links", str(runtime_wheelhouse), "--find-links", str(dist),
                   "--constraint", str(runtime_wheelhouse / "constraints.txt"), "audit-shipper", timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    check = _pip("--python", str(python), "check")
    assert check.returncode == 0, check.stdout
    shipper = venv / "bin" / "shipper"
    result = subprocess.run([str(shipper), "--help"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)  # not the repo: the installed package must be what runs
    assert result.returncode == 0, result.stderr
    where = subprocess.run([str(python), "-c", "import shipper; print(shipper.__file__)"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv)), where.stdout
    native = subprocess.run([str(python), "-c", "import shipper.native as n; print(n.ENABLED, n.module.__file__)"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert native.stdout.startswith(f"True {venv}"), native.stdout + native.stderr
    # The test-only dependencies stay out of the image.
    frozen = _pip("--python", str(python), "freeze").stdout.lower()
    for test_only in ("pytest", "hypothesis", "calfkit"):
        assert test_only not in frozen, shlex.quote(test_only)
