"""Per-clip time of a 10-prompt batch (`pv generate NAME -`, one model load) vs 10 separate
`pv generate` calls (each pays start-up, imports and the model build), through the real CLI on
the tiny profile. Run by hand: `python bench/batch.py [--clips 10]`; prints one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import astronaut_photo

PROMPTS = ["surfing at sunset", "dancing on a stage", "reading a book in a library", "riding a bicycle in Paris",
           "cooking pasta", "playing the guitar", "walking in the rain", "skiing down a slope", "painting a mural",
           "laughing with friends", "jogging on a beach", "drinking coffee in a cafe"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pv-bench-batch-"))
    env = {**os.environ, "PV_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}

    face = astronaut_photo(work)
    subprocess.run(["pv", "tune", str(face), "--name", "alice", "--profile", "tiny", "--steps", "0", "-q"], env=env,
                   check=True, capture_output=True)
    prompts = (PROMPTS * 2)[: args.clips]
    frames = ["--frames", str(args.frames)]

    start = time.perf_counter()
    subprocess.run(["pv", "generate", "alice", "-", "-q", "-o", str(work / "batch" / "{index}.mp4"), *frames],
                   input="\n".join(prompts) + "\n", text=True, env=env, check=True, capture_output=True)
    batch = time.perf_counter() - start

    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        subprocess.run(["pv", "generate", "alice", prompt, "-q", "-o", str(work / "single" / f"{i}.mp4"), *frames],
                       env=env, check=True, capture_output=True)
    single = time.perf_counter() - start
    json.dump({"clips": args.clips, "frames": args.frames, "batch_per_clip_s": round(batch / args.clips, 2),
               "separate_calls_per_clip_s": round(single / args.clips, 2), "speedup": round(single / batch, 2)},
              sys.stdout)
    print()


if __name__ == "__main__":
    main()
