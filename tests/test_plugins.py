import importlib.metadata as md
import json

from typer.testing import CliRunner

from pvcli import hookimpl
from pvcli.cli import create_app
from pvcli.plugins import build_plugin_manager


class ThirdParty:
    __name__ = "thirdparty"

    @hookimpl
    def register_encoders(self, register):
        register("fake-enc", lambda options=None, device="cpu": "made", description="test encoder")
        register("facenet", lambda **kw: None)  # a clash: refused, the first one wins


def test_a_plugin_registers_like_the_builtins():
    warnings = []
    reg = build_plugin_manager(extra=(ThirdParty(),), warn=warnings.append)
    assert reg.get("encoders", "fake-enc").plugin == "thirdparty"
    assert reg.create("encoders", "fake-enc") == "made"
    assert reg.get("encoders", "facenet").plugin == "facenet"
    assert any("already registered" in w for w in warnings)
    assert set(reg.entries["backbones"]) >= {"animatediff", "animatediff-tiny"}


def test_broken_plugin_warns_and_pv_still_works(monkeypatch, capsys):
    real = md.entry_points

    def fake(**kw):
        eps = list(real(**kw))
        if kw.get("group") == "pv":
            eps.append(md.EntryPoint("broken", "pv_no_such_module_xyz", "pv"))
        return eps

    monkeypatch.setattr(md, "entry_points", fake)
    app = create_app()  # plugins load here (once), so their warnings print while the app is built
    r = CliRunner().invoke(app, ["plugins", "--json"])
    assert r.exit_code == 0
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert "error" in rows["broken"] and "animatediff" in rows
    stderr = capsys.readouterr().err + r.stderr
    assert "could not be loaded" in stderr and "PV_PLUGINS" in stderr
    assert stderr.count("could not be loaded") == 1


def test_pv_plugins_env_var_selects_plugins(monkeypatch):
    monkeypatch.setenv("PV_PLUGINS", "")
    assert build_plugin_manager().plugins == {}
    monkeypatch.setenv("PV_PLUGINS", "facenet")
    reg = build_plugin_manager()
    assert set(reg.plugins) == {"facenet"} and not reg.entries["backbones"]
    r = CliRunner().invoke(create_app(), ["tune", "x.jpg", "--name", "a", "--profile", "tiny"])
    assert r.exit_code == 1


def test_unknown_backbone_error_lists_known():
    import pytest

    from pvcli.errors import PVError

    with pytest.raises(PVError, match="unknown backbone 'nope' .*animatediff-tiny"):
        build_plugin_manager().get("backbones", "nope")
