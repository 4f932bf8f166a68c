"""nox sessions: `nox -s tests`, `nox -s lint`, `nox -s bench` (benchmarks are run by hand), `nox -s bench_gpu`."""

import os

import nox

nox.options.sessions = ["tests", "lint"]
INSTALL = ("torch==2.13.0", "-e", ".[test]")


@nox.session
def tests(session):
    session.install(*INSTALL)
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def bench(session):
    session.install(*INSTALL)
    session.run("python", "bench/ratios.py", *session.posargs)  # BENCHMARKS.md's tables; --real adds SD 1.5 size
    session.run("python", "bench/tune_step.py")
    session.run("python", "bench/generate.py")
    session.run("python", "bench/batch.py")


# What bench/gpu.py needs beyond torch, transformers, peft and accelerate (README: "Real-size GPU
# benchmark"); pv itself goes in with --no-deps: the benchmark imports none of its face-model and
# video packages (OpenCV, insightface, onnxruntime, moviepy, the 94 MB FaceNet graph).
GPU_BENCH_NEEDS = ("diffusers==0.42.1", "typer>=0.12", "rich>=13", "pluggy>=1.5", "pyyaml>=6", "platformdirs>=4",
                   "setuptools>=69")


@nox.session(venv_params=["--system-site-packages"])
def bench_gpu(session):
    """bench/gpu.py on the machine's own torch (its CUDA build): `nox -s bench_gpu -- --family wan`.
    With $PV_WHEELS (default ./pv-wheels) present, installs offline from it (`pip download`, README)."""
    wheels = os.environ.get("PV_WHEELS", "pv-wheels")
    offline = ("--no-index", "--find-links", wheels) if os.path.isdir(wheels) else ()
    session.install(*offline, *GPU_BENCH_NEEDS)
    session.install(*offline, "--no-deps", "-e", ".")
    session.run("python", "bench/gpu.py", *session.posargs)
