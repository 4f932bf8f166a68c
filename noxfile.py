"""nox sessions: `nox -s tests`, `nox -s lint`, `nox -s bench` (benchmarks are run by hand)."""

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
