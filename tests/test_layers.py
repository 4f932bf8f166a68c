"""The layers import downward only: CLI -> API -> jobs -> engine -> core; plugins -> core. Read
from the source (every import statement, top-level or inside a function), so a newcomer's wrong
arrow fails here rather than in review."""

import ast
from pathlib import Path

import pvcli

CORE = Path(pvcli.__file__).parent
PLUGINS = CORE.parent / "plugins"
COMMANDS = {"tune", "generate", "evaluate", "info", "report"}  # one command, one meaning, at each layer


def _module(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imports(path: Path, root: Path = CORE, package: str = "pvcli") -> set[str]:
    """Absolute names of what the module at `path` imports (`from . import x` gives pkg.x)."""
    name = _module(path, root, package)
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return found


def _core_files(*layers: str) -> list[Path]:
    return sorted(p for layer in layers for p in (CORE / layer).glob("*.py"))


def _hits(files, bad) -> list[str]:
    return [f"{p.relative_to(CORE.parent)} imports {m}" for p in files for m in sorted(imports(p)) if bad(m)]


def test_the_core_imports_no_engine_job_api_or_cli():
    # api.py is the API layer; the package's __init__ forwards `pv.tune` & co. to it, lazily
    core = [p for p in CORE.glob("*.py") if p.name not in {"api.py", "__init__.py", "__main__.py"}]
    layered = ("pvcli.engine", "pvcli.jobs", "pvcli.api", "pvcli.cli")
    assert not _hits(core, lambda m: m.startswith(layered))


def test_the_engine_imports_no_job_api_or_cli_and_jobs_no_api_or_cli():
    assert not _hits(_core_files("engine"), lambda m: m.startswith(("pvcli.jobs", "pvcli.api", "pvcli.cli")))
    assert not _hits(_core_files("jobs"), lambda m: m.startswith(("pvcli.api", "pvcli.cli")))


def test_the_cli_reaches_pv_only_through_the_api_settings_and_console():
    allowed = ("pvcli.api", "pvcli.settings", "pvcli.console", "pvcli.cli", "pvcli.__version__")

    def bad(m):
        return m.startswith("pvcli") and m != "pvcli" and not m.startswith(allowed)

    assert not _hits(_core_files("cli"), bad)


def test_no_two_core_modules_share_a_name_with_different_meanings():
    stems: dict[str, list[str]] = {}
    for p in CORE.rglob("*.py"):
        if p.name != "__init__.py":
            stems.setdefault(p.stem, []).append(str(p.relative_to(CORE)))
    shared = {s: where for s, where in stems.items() if len(where) > 1}
    assert set(shared) <= COMMANDS, shared


def test_plugins_import_no_other_plugins_private_names():
    hits = []
    for path in PLUGINS.rglob("*.py"):
        own = path.relative_to(PLUGINS).parts[0]
        for m in imports(path, PLUGINS, "").__iter__():
            m = m.lstrip(".")
            top, _, rest = m.partition(".")
            if top.startswith("pv_") and top != own and any(part.startswith("_") for part in rest.split(".") if part):
                hits.append(f"{path.relative_to(PLUGINS)} imports {m}")
    assert not hits, hits


def test_the_old_module_names_still_import_with_a_deprecation_warning():
    import importlib
    import sys
    import warnings

    for old, new, attr in [("pvcli.identity", "pvcli.identity_files", "read_adapter"),
                           ("pvcli.engine.identity", "pvcli.images", "load_image"),
                           ("pvcli.engine.identity", "pvcli.engine.face_crops", "reference_faces"),
                           ("pvcli.engine.evaluate", "pvcli.engine.metrics", "face_similarity"),
                           ("pvcli.evaluation", "pvcli.jobs.scoring", "Evaluator"),
                           ("pvcli.jobs.common", "pvcli.jobs.resources", "build_backbone"),
                           ("pvcli.tiny", "pv_tiny", "char_tokenizer")]:
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), old
        assert getattr(module, attr) is getattr(importlib.import_module(new), attr)
