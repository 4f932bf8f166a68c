"""Hostile input: a bundle, an identity, a clip or a command line whose text carries HTML, terminal
markup, huge numbers or values of the wrong type. Pages show it as text, the terminal prints it
as text, and every value pv cannot use is refused in one line that names it."""

import hashlib
import html
import io
import json
import os
import tarfile
from html.parser import HTMLParser

import numpy as np
import pytest
import yaml
from conftest import CHROMIUM, chromium_probe, copy_home, run

# each payload sets window.pvPwned if a browser ever runs it
SCRIPT = "</script><script>window.pvPwned=1</script>"
IMG = '"><img src=x onerror="window.pvPwned=1">'
MARKUP = "[/][bold]x[link=javascript:window.pvPwned=1]y"


class Tags(HTMLParser):
    """Every start tag with its attributes, every <script>'s text, and the page's text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.scripts, self.text, self._in_script = [], [], [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        (self.scripts if self._in_script else self.text).append(data)


def no_live_markup(page: str, scripts: int = 0) -> Tags:
    """The page has no tag or attribute a payload brought in: only pv's own scripts, no event
    handlers, every image a data URI, no links."""
    tags = Tags(page)
    assert [t for t, _ in tags.tags].count("script") == scripts
    assert not any("pvPwned" in s for s in tags.scripts)
    for tag, attrs in tags.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        assert tag not in ("a", "iframe", "object", "embed", "link", "base"), tag
        if tag == "img":
            assert attrs["src"].startswith("data:image/"), attrs["src"][:40]
    return tags


@pytest.fixture(scope="module")
def home(alice_home, tmp_path_factory):
    return copy_home(alice_home, tmp_path_factory.mktemp("hostile") / "pvhome")


@pytest.fixture
def store(home, monkeypatch):
    monkeypatch.setenv("PV_HOME", str(home))
    return home / "identities"


@pytest.fixture(scope="module")
def members(home, tmp_path_factory):
    """alice's bundle, member by member."""
    bundle = tmp_path_factory.mktemp("bundle") / "alice.pvid"
    mp = pytest.MonkeyPatch()
    mp.setenv("PV_HOME", str(home))
    try:
        assert run("export", "alice", "--bundle", bundle).exit_code == 0
    finally:
        mp.undo()
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def adapter_with(data: bytes, **meta) -> bytes:
    """adapter.safetensors bytes with metadata fields replaced (the tensors, and their hash, kept)."""
    from safetensors.torch import load, save

    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])["__metadata__"]
    return save(load(data), metadata={**header, **meta})


def craft(path, members: dict, info=None, settings=None, name=None, log=None, adapter=None):
    """A bundle as an attacker writes it: alice's members with fields replaced, the manifest's
    hashes made to match (hashes prove integrity, not intent)."""
    out = dict(members)
    if info:
        out["identity.json"] = json.dumps({**json.loads(out["identity.json"]), **info}).encode()
    if settings:
        config = yaml.safe_load(out["config.yaml"])
        for key, value in settings.items():
            section, field = key.split(".")
            config[section][field] = value
        out["config.yaml"] = yaml.safe_dump(config).encode()
    if log is not None:
        out["log.jsonl"] = log.encode()
    if adapter:
        out["adapter.safetensors"] = adapter_with(out["adapter.safetensors"], **adapter)
    manifest = json.loads(out.pop("manifest.json"))
    if name is not None:
        manifest["name"] = name
    manifest["files"] = {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)} for k, v in out.items()}
    out = {"manifest.json": json.dumps(manifest).encode(), **out}
    with tarfile.open(path, "w:gz") as tar:
        for member, data in out.items():
            info_ = tarfile.TarInfo(member)
            info_.size = len(data)
            tar.addfile(info_, io.BytesIO(data))
    return path


def one_line_error(r) -> str:
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "bug in pv" not in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr
    return " ".join(r.stderr.split())


def test_a_bundle_full_of_markup_imports_and_its_report_shows_every_value_as_text(store, members, tmp_path):
    bundle = craft(tmp_path / "evil.pvid", members, name=SCRIPT,
                   info={"note": SCRIPT + MARKUP, "profile": IMG, "encoder": "facenet$\\frac{$",
                         "held_out_id_sim_before": 0.1, "held_out_id_sim_after": 0.2,
                         "tracker": {"report_to": "<img src=x onerror=window.pvPwned=1>", "run_id": SCRIPT},
                         "created": "javascript:window.pvPwned=1", "a_plugin_field": IMG},
                   settings={"tune.token": IMG, "tune.class_word": SCRIPT},
                   log='{"step": 1, "loss": "<b>1</b>", "id_sim": [1], "prompt": "' + SCRIPT.replace('"', "'") + '"}\n'
                       '{"step": 2, "loss": 0.5, "id_sim": 1e999}\n',
                   adapter={"class_word": "person " + IMG, "scheduler": SCRIPT})
    r = run("import", bundle, "--name", "mallory")
    assert r.exit_code == 0, r.stderr
    r = run("report", "mallory", "-o", tmp_path / "mallory.html")
    assert r.exit_code == 0, r.stderr
    page = (tmp_path / "mallory.html").read_text()
    tags = no_live_markup(page)
    text = "".join(tags.text)
    for shown in (SCRIPT + MARKUP, IMG, "<img src=x onerror=window.pvPwned=1> " + SCRIPT, "facenet$\\frac{$",
                  "token: '" + IMG, "person " + IMG):
        assert shown in text, shown  # the value itself, as text
    assert html.escape(IMG) in page and html.escape(SCRIPT + MARKUP) in page  # escaped as html.escape does
    alts = [a.get("alt") for t, a in tags.tags if t == "img"]
    assert "held-out ID similarity before and after tuning" in alts  # the chart titled with the "$" encoder
    assert "loss, ID similarity and face-hit rate against step" in alts  # the log's bad values are gaps
    assert r.stdout.strip() == str(tmp_path / "mallory.html")
    if os.path.exists(CHROMIUM):  # and a browser runs none of it
        assert browser_ran_payload(tmp_path / "mallory.html", tmp_path) == {"pwned": 0, "images": len(alts)}
    assert run("rm", "mallory", "--yes").exit_code == 0


PROBE = """<script>window.addEventListener("load", function () {
  var pre = document.createElement("pre"); pre.id = "pv-probe";
  pre.textContent = JSON.stringify({pwned: window.pvPwned || 0, images: document.images.length});
  document.body.appendChild(pre);
});</script></body>"""


def browser_ran_payload(page, tmp_path) -> dict:
    """Open the page in headless Chromium (a probe added at its end): whether any payload ran."""
    return chromium_probe(page, PROBE, "pv-probe", tmp_path, 5000)


@pytest.mark.parametrize("crafted, says", [
    ({"info": {"steps": "abc"}}, "identity.json: steps must be an integer, got 'abc'"),
    ({"info": {"steps": 10**30}}, "identity.json: steps must be between 0 and"),
    ({"info": {"held_out_id_sim_after": float("nan")}}, "held_out_id_sim_after must be between -1 and 1, got nan"),
    ({"info": {"encoder": ["facenet"]}}, "identity.json: encoder must be text, got ['facenet']"),
    ({"info": {"photos": {"a": 1}}}, "identity.json: photos must be a list of file names"),
    ({"info": {"tracker": ["wandb"]}}, "identity.json: tracker must be a mapping"),
    ({"info": {"seconds_per_step": True}}, "seconds_per_step must be a number, got True"),
    ({"info": {"held_out_at": {"frames": 0, "height": 64, "width": 64, "steps": 4}}},
     "identity.json: held_out_at frames must be between 1 and"),
    ({"info": {"held_out_at": [9, 64, 64]}}, "identity.json: held_out_at must be a mapping of frames, height, width"),
    ({"info": {"note": "fine\x1b]0;owned\x07\x1b[2J"}}, "identity.json: note holds a control character ('\\x1b')"),
    ({"name": ["alice"]}, "manifest.json: name must be text, got ['alice']"),
    ({"adapter": {"rank": "sixteen"}}, "adapter.safetensors: rank must be an integer, got 'sixteen'"),
    ({"adapter": {"alpha": "inf"}}, "adapter.safetensors: alpha must be between"),
    ({"adapter": {"token": "sks\nperson"}}, "adapter.safetensors: token must be one line of text"),
    ({"log": '["step", 1]\n'}, "log.jsonl line 1 is not a step's record"),
    ({"settings": {"tune.seed": 10**30}}, "tune.seed must be an integer between"),
    ({"settings": {"generate.frames": 10**12}}, "generate.frames must be between 1 and 100000"),
    ({"settings": {"generate.height": "tall"}}, "generate.height must be an integer, got 'tall'"),
])
def test_import_refuses_crafted_fields_in_one_line_and_writes_nothing(store, members, tmp_path, crafted, says):
    before = sorted(p.name for p in store.iterdir())
    err = one_line_error(run("import", craft(tmp_path / "bad.pvid", members, **crafted), "--name", "mallory"))
    assert "bad.pvid is not a valid pv identity bundle" in err and says in err, err
    assert sorted(p.name for p in store.iterdir()) == before


@pytest.fixture
def damaged(store):
    """A copy of alice in the store whose files can be edited by a test (as by hand, or an old import)."""
    import shutil

    shutil.copytree(store / "alice", store / "damaged")
    yield store / "damaged"
    shutil.rmtree(store / "damaged", ignore_errors=True)


def test_commands_that_read_a_crafted_identity_fail_in_one_line(damaged, astronaut, tmp_path):
    from safetensors.torch import load_file, save_file

    info = json.loads((damaged / "identity.json").read_text())
    (damaged / "identity.json").write_text(json.dumps({**info, "name": "damaged", "backbone": ["animatediff-tiny"]}))
    for args in (("report", "damaged", "-o", tmp_path / "d.html"), ("generate", "damaged", "x", "-o", tmp_path / "d.mp4"),
                 ("eval", astronaut, "--ref", "damaged"), ("show", "damaged")):
        err = one_line_error(run(*args))
        assert "identity 'damaged' is damaged: identity.json: backbone must be text" in err, (args, err)
    assert not (tmp_path / "d.html").exists()

    (damaged / "identity.json").write_text(json.dumps({**info, "name": "damaged"}))
    path = damaged / "adapter.safetensors"
    save_file(load_file(path), path, metadata={**adapter_meta(path), "rank": "1e9"})
    err = one_line_error(run("generate", "damaged", "x", "-o", tmp_path / "d.mp4"))
    assert "adapter.safetensors is damaged: its metadata's rank must be an integer, got '1e9'" in err


def adapter_meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "np") as fh:
        return fh.metadata()


def test_metadata_markup_prints_as_text_in_the_terminal(damaged, tmp_path):
    from safetensors.torch import load_file, save_file

    info = json.loads((damaged / "identity.json").read_text())
    (damaged / "identity.json").write_text(json.dumps({**info, "name": "damaged"}))
    path = damaged / "adapter.safetensors"
    save_file(load_file(path), path, metadata={**adapter_meta(path), "scheduler": MARKUP})
    r = run("generate", "damaged", "surfing", "-o", tmp_path / "[bold]clip[/].gif", "--frames", 4, "--steps", 2)
    assert r.exit_code == 0, r.stderr  # was: rich's MarkupError on "[/]", "unexpected ... bug in pv"
    assert f"was tuned with scheduler {MARKUP!r}" in " ".join(r.stderr.split())
    assert r.stdout.strip() == str(tmp_path / "[bold]clip[/].gif") and (tmp_path / "[bold]clip[/].gif").is_file()


def test_eval_prints_paths_and_prompts_as_text_and_refuses_a_crafted_clip_record(store, astronaut, tmp_path):
    from pvcli.images import load_image
    from pvcli.video import write_mp4

    frames = np.stack([load_image(astronaut)[100:356, 150:406]] * 4)
    clip = tmp_path / "[bold]still[/].mp4"
    write_mp4(frames, clip, 8, {"prompt": SCRIPT})
    report = tmp_path / "[red]r[/red].html"
    r = run("eval", clip, "--ref", astronaut, "--scorer", "clip-tiny", "--encoder", "facenet", "--report", report)
    assert r.exit_code == 0, r.stderr
    assert f"report: {report}" in r.stderr  # the file that was written, brackets and all
    page = report.read_text()
    tags = no_live_markup(page, scripts=1)  # the sort script, and only it
    assert SCRIPT in "".join(tags.text) and "[bold]still[/].mp4" in "".join(tags.text)
    if os.path.exists(CHROMIUM):
        assert browser_ran_payload(report, tmp_path)["pwned"] == 0

    for record, says in [({"identity": "../../etc"}, "has identity '../../etc', not an identity name"),
                         ({"identity": ["alice"]}, "has identity ['alice'], not an identity name"),
                         ({"fps": "fast"}, "has fps 'fast', not a number of frames per second")]:
        bad = tmp_path / "bad.mp4"
        write_mp4(frames, bad, 8, record)
        err = one_line_error(run("eval", bad, "--scorer", "clip-tiny", "--encoder", "facenet"))
        assert f"{bad}: the pv record embedded in the clip {says}" in err, err
    err = one_line_error(run("eval", tmp_path / "[x]missing.mp4", "--ref", astronaut))
    assert f"{tmp_path / '[x]missing.mp4'}: no such video or folder" in err  # a path, not a pattern nor a name


@pytest.mark.parametrize("args, says", [
    (("export", "alice", "--format", "kohya", "--bundle", "{tmp}/a.pvid"), "--format kohya is a LoRA file's key format"),
    (("eval", "{tmp}/v.mp4", "--ref", "alice", "--seed", "3"), "--seed needs an identity name, not videos"),
    (("eval", "{tmp}/v.mp4", "--ref", "alice", "--out-dir", "{tmp}/o"), "--out-dir needs an identity name, not videos"),
    (("generate", "alice", "x", "--seed", str(10**24)), "--seed must be an integer between"),
    (("generate", "alice", "x", "--frames", str(10**20)), "generate.frames must be an integer between"),
    (("eval", "alice", "--seed", str(-(10**24))), "--seed must be an integer between"),
])
def test_flags_are_refused_never_dropped_and_huge_numbers_fail_in_one_line(store, tmp_path, args, says):
    from pvcli.video import write_mp4

    write_mp4(np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "v.mp4", 8, {})
    err = one_line_error(run(*[a.replace("{tmp}", str(tmp_path)) for a in args]))
    assert says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # nothing written


def test_a_stdin_seed_past_what_torch_takes_is_refused(store, tmp_path):
    r = run("generate", "alice", "-", "-o", tmp_path / "{index}.gif", input='{"prompt": "x", "seed": 1e400}\n')
    assert "seed must be an integer" in one_line_error(r)
    r = run("generate", "alice", "-", "-o", tmp_path / "{index}.gif", input=f'{{"prompt": "x", "seed": {2**64}}}\n')
    assert "stdin line 1: seed must be an integer between" in one_line_error(r)


def test_a_bundle_carries_no_path_of_the_machine_that_made_it(store, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "models" / "sd15"
    model.mkdir(parents=True)
    shutil.copytree(store / "alice", store / "local")
    try:
        info = json.loads((store / "local" / "identity.json").read_text())
        (store / "local" / "identity.json").write_text(json.dumps({**info, "name": "local", "base_model": str(model)}))
        config = yaml.safe_load((store / "local" / "config.yaml").read_text())
        config["backbone"]["options"]["base_model"] = str(model)
        config["encoder"]["options"]["model"] = "~/weights/face.onnx"
        (store / "local" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        path = store / "local" / "adapter.safetensors"
        save_file(load_file(path), path, metadata={**adapter_meta(path), "base_model": str(model)})

        r = run("export", "local", "--bundle", tmp_path / "local.pvid")
        assert r.exit_code == 0, r.stderr
        with tarfile.open(tmp_path / "local.pvid") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in files.items():
            assert str(tmp_path).encode() not in data and b"weights/" not in data, name
        assert yaml.safe_load(files["config.yaml"])["backbone"]["options"]["base_model"] == "local:sd15"
        assert json.loads(files["identity.json"])["base_model"] == "local:sd15"
        r = run("import", tmp_path / "local.pvid", "--name", "local2")
        assert r.exit_code == 0, r.stderr
        err = " ".join(r.stderr.split())
        assert "--set backbone.options.base_model=PATH" in err and "--set encoder.options.model=PATH" in err
    finally:
        shutil.rmtree(store / "local", ignore_errors=True)
        shutil.rmtree(store / "local2", ignore_errors=True)


def test_the_tar_data_filter_refuses_what_slips_past_pvs_own_checks(store, members, tmp_path, monkeypatch):
    """Defence in depth: with pv's own member checks gone, the standard library's data filter
    still refuses a path out of the destination, a link out of it and a device."""
    import pvcli.jobs.bundle as bundle_job

    monkeypatch.setattr(bundle_job, "_member_fault", lambda info, allowed: None)
    before = sorted(p.name for p in store.iterdir())
    for name, fields in [("../evil", {}), ("log2", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}),
                         ("dev", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})]:
        path = tmp_path / "bad.pvid"
        with tarfile.open(path, "w:gz") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(name)
            for k, v in fields.items():
                setattr(info, k, v)
            tar.addfile(info, io.BytesIO(b"x") if not fields else None)
        err = one_line_error(run("import", path, "--name", "mallory"))
        assert f"{name!r} is refused by the tar data filter" in err, err
    assert sorted(p.name for p in store.iterdir()) == before
    assert not os.path.exists("/pv-bundle")


def test_a_report_of_a_minimal_record_says_what_is_missing(damaged, tmp_path):
    """An identity record with only its name (an older or foreign pv wrote the rest elsewhere)."""
    (damaged / "identity.json").write_text(json.dumps({"name": "damaged"}))
    r = run("report", "damaged", "-o", tmp_path / "d.html")
    assert r.exit_code == 0, r.stderr
    page = (tmp_path / "d.html").read_text()
    assert "tuned ? with pv ?, profile ?, backbone ?, encoder ?" in page
    assert "<tr><th>steps</th><td class='n'>-</td></tr>" in page
