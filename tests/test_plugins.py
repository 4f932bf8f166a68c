import importlib.metadata as md
import json

from conftest import NO_HELD_OUT
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


def test_pv_plugins_env_var_selects_plugins(monkeypatch, astronaut, pv_home):
    monkeypatch.setenv("PV_PLUGINS", "")
    assert build_plugin_manager().plugins == {}
    monkeypatch.setenv("PV_PLUGINS", "facenet")
    reg = build_plugin_manager()
    assert set(reg.plugins) == {"facenet"} and not reg.entries["backbones"]
    assert astronaut.is_file()  # a real photo: only the plugin selection decides the outcome below
    tune = ["tune", str(astronaut), "--name", "a", "--profile", "tiny", *NO_HELD_OUT, "--steps", "0", "-q"]
    r = CliRunner().invoke(create_app(), tune)  # the encoder's plugin is on, the backbone's is not
    assert r.exit_code == 1 and "unknown backbone 'animatediff-tiny' (known: none)" in r.stderr, r.stderr
    assert "PV_PLUGINS" in r.stderr and "Traceback" not in r.stderr
    monkeypatch.setenv("PV_PLUGINS", "animatediff")  # now the backbone's plugin is on and the encoder's is not
    r = CliRunner().invoke(create_app(), tune)
    assert r.exit_code == 1 and "unknown encoder 'facenet' (known: none)" in r.stderr, r.stderr
    assert not (pv_home / "identities" / "a").exists()
    monkeypatch.delenv("PV_PLUGINS")  # every installed plugin: the same command tunes
    r = CliRunner().invoke(create_app(), tune)
    assert r.exit_code == 0, r.stderr
    assert (pv_home / "identities" / "a" / "identity.json").is_file()


def test_unknown_backbone_error_lists_known():
    import pytest

    from pvcli.errors import PVError

    with pytest.raises(PVError, match="unknown backbone 'nope' .*animatediff-tiny"):
        build_plugin_manager().get("backbones", "nope")
