"""The image: what CI can check without a Docker engine. The Dockerfile parses, every file it
copies exists and is in the build context, the final stage runs as non-root without build
tools, and the entry points run from a plain virtualenv exactly as the image runs them."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator

import httpx
import pytest
from packaging.requirements import Requirement

from mailwarden.listener import config as lc
from tests.deploy import dockerfile
from tests.deploy.tools import ROOT

DOCKERFILE = ROOT / "Dockerfile"
LOCKS = ROOT / "deploy" / "image"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|build-essential|python3?-dev|libc6?-dev|cargo|rustc)\b"
)
LISTENER_PYPROJECT = ROOT / "listener" / "pyproject.toml"
# Only the operator imports these; the listener image goes without them.
OPERATOR_ONLY = {"kopf", "kubernetes", "pydantic"}
CONFIG_PATH = "/etc/mailwarden/config/listener.yaml"


@pytest.fixture(scope="module")
def parsed() -> dockerfile.Dockerfile:
    return dockerfile.parse(DOCKERFILE.read_text())


def runtime(parsed: dockerfile.Dockerfile, name: str) -> dockerfile.Stage:
    (stage,) = [s for s in parsed.stages if s.name == name]
    return stage


def test_dockerfile_parses_into_build_stages_and_two_runtime_targets(
    parsed: dockerfile.Dockerfile,
) -> None:
    assert [s.name for s in parsed.stages] == [
        "build-listener",
        "build-operator",
        "listener",
        "operator",
    ]
    # The last stage is what a plain `docker build .` makes.
    assert parsed.final.name == "operator"


def test_the_parser_refuses_what_docker_would_refuse() -> None:
    with pytest.raises(dockerfile.DockerfileError, match="unknown instruction COPPY"):
        dockerfile.parse("FROM scratch\nCOPPY a b\n")
    with pytest.raises(dockerfile.DockerfileError, match="before the first FROM"):
        dockerfile.parse("RUN true\nFROM scratch\n")
    with pytest.raises(dockerfile.DockerfileError, match="ends inside"):
        dockerfile.parse("FROM scratch\nRUN true \\\n")


def test_every_stage_builds_from_a_base_pinned_by_digest_or_from_an_earlier_stage(
    parsed: dockerfile.Dockerfile,
) -> None:
    earlier: set[str] = set()
    for stage in parsed.stages:
        if stage.base in earlier:
            continue
        assert DIGEST.search(stage.base), f"{stage.name}: {stage.base} is not pinned by digest"
        assert stage.base.startswith("python:3.11-slim-bookworm@")
        earlier.add(stage.name or "")


def test_every_copied_file_exists_and_is_in_the_build_context(
    parsed: dockerfile.Dockerfile,
) -> None:
    patterns = dockerfile.read_ignore(ROOT / ".dockerignore")
    names = {s.name for s in parsed.stages}
    copied = 0
    for stage in parsed.stages:
        for ins in stage.of("COPY") + stage.of("ADD"):
            if "from" in ins.flags():
                assert ins.flags()["from"] in names
                continue
            *sources, _dest = ins.words()
            for src in sources:
                assert (ROOT / src).exists(), f"line {ins.line}: {src} does not exist"
                assert not dockerfile.ignored(src, patterns), (
                    f"line {ins.line}: {src} is excluded by .dockerignore"
                )
                copied += 1
    assert copied >= 5


def test_dockerignore_keeps_local_environments_and_the_tests_out_of_the_context() -> None:
    patterns = dockerfile.read_ignore(ROOT / ".dockerignore")
    left_out = (
        ".venv/bin/python",
        ".git/HEAD",
        ".tools/bin/helm",
        "tests/conftest.py",
        "listener/mailwarden/listener/__pycache__/x.pyc",
        "bench/run.py",
    )
    for path in left_out:
        assert dockerfile.ignored(path, patterns), path
    kept = (
        "pyproject.toml",
        "listener/mailwarden/listener/server.py",
        "operator/mailwarden/cli/__init__.py",
        "deploy/image/listener.lock",
        "deploy/image/operator.lock",
    )
    for path in kept:
        assert not dockerfile.ignored(path, patterns), path


@pytest.mark.parametrize("target", ["listener", "operator"])
def test_runtime_targets_run_as_a_numeric_non_root_user(
    parsed: dockerfile.Dockerfile, target: str
) -> None:
    users = runtime(parsed, target).of("USER")
    assert users, f"{target} sets no USER: it would run as root"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) != 0, "runAsNonRoot can only verify a numeric uid"
    assert gid.isdigit() and int(gid) != 0
    # The chart runs the operator and tells the operator to run listeners with the same uid.
    chart = ROOT / "deploy/helm/mailwarden"
    assert f"runAsUser: {uid}" in (chart / "templates/deployment.yaml").read_text()
    assert f"runAsUser: {uid}" in (chart / "values.yaml").read_text()


@pytest.mark.parametrize("target", ["listener", "operator"])
def test_runtime_targets_install_nothing_and_carry_no_build_tools(
    parsed: dockerfile.Dockerfile, target: str
) -> None:
    stage = runtime(parsed, target)
    assert not stage.of("RUN"), f"{target} should only copy a built virtualenv"
    for ins in stage.instructions:
        assert not BUILD_TOOLS.search(ins.args), f"line {ins.line}: {ins.args}"
    for build in parsed.stages[:2]:
        for ins in build.of("RUN"):
            assert "apt-get" not in ins.args, "wheels only: no stage needs a compiler"


def test_listener_target_copies_the_virtualenv_without_the_operator_s_dependencies(
    parsed: dockerfile.Dockerfile,
) -> None:
    (copy,) = runtime(parsed, "listener").of("COPY")
    assert copy.flags()["from"] == "build-listener"
    copied_locks = [w for i in parsed.stages[0].of("COPY") for w in i.words() if ".lock" in w]
    assert set(copied_locks) == {"deploy/image/listener.lock"}


def test_entry_points_are_each_distribution_s_console_script(
    parsed: dockerfile.Dockerfile,
) -> None:
    for target, pyproject, script, cmd, ports in (
        (
            "listener",
            LISTENER_PYPROJECT,
            "mailwarden-listener",
            ["--config", CONFIG_PATH],
            {lc.METRICS_PORT},
        ),
        ("operator", ROOT / "pyproject.toml", "mailwarden", ["operator"], {8080, 9091}),
    ):
        assert script in tomllib.loads(pyproject.read_text())["project"]["scripts"]
        stage = runtime(parsed, target)
        (entry,) = stage.of("ENTRYPOINT")
        assert entry.words() == [script]
        (command,) = stage.of("CMD")
        assert command.words() == cmd
        assert {int(p) for ins in stage.of("EXPOSE") for p in ins.words()} == ports


def test_the_listener_build_installs_only_the_listener_distribution(
    parsed: dockerfile.Dockerfile,
) -> None:
    build = next(s for s in parsed.stages if s.name == "build-listener")
    copied = {i.words()[0] for i in build.of("COPY")}
    assert "operator" not in copied and "pyproject.toml" not in copied
    assert any(re.search(r"install --no-deps \./listener\b", i.args) for i in build.of("RUN"))


def test_listener_command_reads_the_file_the_operator_mounts() -> None:
    from mailwarden.operator import naming

    assert f"{naming.CONFIG_DIR}/{naming.CONFIG_FILE}" == CONFIG_PATH


def dependencies(pyproject: pathlib.Path) -> list[str]:
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def pins(lock: str) -> dict[str, str]:
    out = {}
    for line in (LOCKS / lock).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.lower().replace("_", "-")] = version
    return out


@pytest.mark.parametrize("lock", ["listener.lock", "operator.lock"])
def test_locks_pin_every_runtime_dependency_at_a_version_the_project_accepts(lock: str) -> None:
    pinned = pins(lock)
    deps = dependencies(LISTENER_PYPROJECT)
    if lock == "operator.lock":
        deps += dependencies(ROOT / "pyproject.toml")
    for name in OPERATOR_ONLY:
        if lock == "listener.lock":
            assert name not in pinned, f"the listener image does not need {name}"
    for dep in map(Requirement, deps):
        if dep.marker and not dep.marker.evaluate({"sys_platform": "linux"}):
            continue
        name = dep.name.lower().replace("_", "-")
        if name == "mailwarden-listener":
            continue  # installed from listener/ in the image, not from a lock
        assert name in pinned, f"{dep.name} is not pinned: run scripts/lock-image-requirements"
        assert dep.specifier.contains(pinned[name], prereleases=True), (
            f"{dep.name}=={pinned[name]} does not satisfy {dep}: "
            "run scripts/lock-image-requirements"
        )


def test_the_listener_lock_is_the_operator_lock_s_subset_at_the_same_versions() -> None:
    listener, operator = pins("listener.lock"), pins("operator.lock")
    assert listener.items() <= operator.items()


# -- the entry points, from a plain virtualenv as the image builds it -------------------------


def build_wheel(source: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    before = set(into.glob("*.whl"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(into),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"building the wheel of {source} failed:\n{proc.stderr[-3000:]}"
    (wheel,) = set(into.glob("*.whl")) - before
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """The two distributions as wheels: `mailwarden-listener` (listener/) and `mailwarden`,
    built from what the image's build context holds (.dockerignore): a checkout's leftover
    build/ folders would otherwise end up in the wheels."""
    context = tmp_path_factory.mktemp("context")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    for folder in ("listener", "operator"):
        shutil.copytree(
            ROOT / folder,
            context / folder,
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
        )
    into = tmp_path_factory.mktemp("wheels")
    return {
        "listener": build_wheel(context / "listener", into),
        "mailwarden": build_wheel(context, into),
    }


def make_venv(env: pathlib.Path, wheels: list[pathlib.Path], *, listener_image: bool) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install",
         "--quiet", "--no-deps", *map(str, wheels)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    site = next((env / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(pathlib.Path, sys.path) if p.name == "site-packages")
    # After the venv's own site-packages: mailwarden itself comes from the wheels.
    (site / "zz-test-deps.pth").write_text(f"{deps}\n")
    if listener_image:
        (site / "no_operator_deps.py").write_text(BLOCKER)
        (site / "aa-no-operator-deps.pth").write_text("import no_operator_deps\n")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, pathlib.Path]) -> pathlib.Path:
    """As the listener image builds it: only the listener's wheel, installed (not editable)
    into a fresh virtualenv. Third-party packages come from the test environment, less the
    operator's (kopf, kubernetes, pydantic), which the listener image does not have."""
    env = tmp_path_factory.mktemp("listener-image") / "venv"
    make_venv(env, [wheels["listener"]], listener_image=True)
    return env


@pytest.fixture(scope="module")
def full_venv(
    tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, pathlib.Path]
) -> pathlib.Path:
    """As the operator image builds it: both wheels."""
    env = tmp_path_factory.mktemp("operator-image") / "venv"
    make_venv(env, [wheels["listener"], wheels["mailwarden"]], listener_image=False)
    return env


# Installed into the listener virtualenv: the operator's packages cannot be imported, as in
# the listener image.
BLOCKER = f"""
import importlib.abc, sys

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(OPERATOR_ONLY)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the listener image)")
        return None

sys.meta_path.insert(0, _Absent())
"""


def test_the_listener_virtualenv_really_lacks_the_operator_s_packages(venv: pathlib.Path) -> None:
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import kopf"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=venv,
    )
    assert proc.returncode == 1 and "not in the listener image" in proc.stderr


@pytest.mark.parametrize("module", ["mailwarden.operator", "mailwarden.cli"])
def test_the_listener_virtualenv_holds_no_operator_or_cli_code(
    venv: pathlib.Path, module: str
) -> None:
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import {module}"],
        capture_output=True, text=True, env=clean_env(), cwd=venv,
    )  # fmt: skip
    assert proc.returncode == 1 and f"No module named '{module}'" in proc.stderr
    assert not (venv / "bin" / "mailwarden").exists()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_installed_command_is_the_wheel_s_own_and_shows_its_commands(
    full_venv: pathlib.Path,
) -> None:
    venv = full_venv
    out = subprocess.run(
        [str(venv / "bin" / "mailwarden"), "--help"],
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=venv, check=True,
    ).stdout  # fmt: skip
    for command in ("listen", "render", "operator", "listener"):
        assert command in out
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mailwarden.listener as m; print(m.__file__)"],
        capture_output=True, text=True, env=clean_env(), cwd=venv, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(venv)), f"mailwarden imported from {where}, not the wheel"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listener_process(
    venv: pathlib.Path, tmp_path: pathlib.Path
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    metrics_port, smtp_port = free_port(), free_port()
    cfg = lc.ListenerConfig(
        services=(
            lc.ServiceConfig(
                name="mail/smtp",
                service="SMTP",
                listen=(lc.Endpoint(address="127.0.0.1", port=smtp_port),),
                backend=lc.Backend(host="127.0.0.1", port=9),
            ),
        ),
        metrics=lc.Metrics(address="127.0.0.1", port=metrics_port),
        drain_seconds=1,
    )
    path = tmp_path / "listener.yaml"
    path.write_text(lc.dumps(cfg))
    proc = subprocess.Popen(
        [str(venv / "bin" / "mailwarden-listener"), "--config", str(path)],
        env=clean_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield metrics_port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_listener_entry_point_serves_health_and_metrics_then_exits_cleanly_on_sigterm(
    listener_process: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, proc = listener_process
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
            if status == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    assert status == 200, "the listener never answered /healthz"
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'mailwarden_connection_cap{scope="service",service="mail/smtp"}' in metrics
    proc.send_signal(signal.SIGTERM)
    # drain_seconds is 1: it must be gone well within the deadline, with status 0.
    assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize(
    ("image", "argv", "prog"),
    [
        ("venv", ["mailwarden-listener"], "mailwarden-listener"),
        ("full_venv", ["mailwarden", "listener"], "mailwarden listener"),
    ],
    ids=["listener-image", "full-cli"],
)
def test_listener_entry_point_refuses_a_broken_config_with_a_clear_message(
    request: pytest.FixtureRequest, image: str, argv: list[str], prog: str, tmp_path: pathlib.Path
) -> None:
    venv: pathlib.Path = request.getfixturevalue(image)
    path = tmp_path / "listener.yaml"
    path.write_text("services:\n  - name: x\n    service: SMTP\n    listen: []\n")
    proc = subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:], "--config", str(path)],
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{prog}:" in proc.stderr and "listen" in proc.stderr
    assert "Traceback" not in proc.stderr
