"""A run writes nothing outside its output and PV_HOME: no telemetry files of onnxruntime, no
torch or matplotlib caches in the user's home or the temp folder."""

import os
import subprocess
import sys

# One process (one torch import) runs the CLI twice: a tune (FaceNet + MTCNN in onnxruntime,
# the tiny backbone through diffusers/peft) and a report (matplotlib).
RUNS = r"""
import sys
from typer.testing import CliRunner
from pvcli.cli import create_app

for args in (["tune", sys.argv[1], "--name", "alice", "--profile", "tiny", "--steps", "0", "--set", "tune.held_out=0",
              "-q"], ["report", "alice", "-o", "alice.html", "-q"]):
    r = CliRunner().invoke(create_app(), args)
    assert r.exit_code == 0, r.output
"""


def test_a_run_writes_nothing_outside_its_output_and_pv_home(astronaut, tmp_path):
    outside = {k: tmp_path / k.lower() for k in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TMPDIR")}
    for d in outside.values():
        d.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()  # what pv sets in this process is not the user's choice
           if k not in ("ORT_DISABLE_TELEMETRY", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR", "CUDA_CACHE_PATH",
                         "TRITON_CACHE_DIR")}
    env.update({k: str(v) for k, v in outside.items()}, PV_HOME=str(tmp_path / "pvhome"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", RUNS, str(astronaut)], cwd=work, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "pvhome" / "identities" / "alice" / "identity.json").is_file() and (work / "alice.html").is_file()
    written = sorted(str(p.relative_to(tmp_path)) for d in outside.values() for p in d.rglob("*"))
    assert written == []
