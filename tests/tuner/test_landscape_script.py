"""benchmarks/landscape.py end to end on the null backend: every configuration measured in a
child, the CPU (model and flags) and the input flags recorded in the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.device import cpu_info

ROOT = Path(__file__).resolve().parents[2]
STUDY = """\
[model]
name = "tiny"

[backend]
name = "null"
device = "cpu"
options = {latency_ms = 1}

[scenario]
name = "offline"
duration_s = 0.3
"""


def test_a_landscape_records_the_cpu_and_every_point(tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    out = tmp_path / "landscape.json"
    argv = [sys.executable, str(ROOT / "benchmarks" / "landscape.py"), "--config", str(study)]
    argv += ["--batch-sizes", "1,2", "--streams", "1", "--precisions", "fp32"]
    argv += ["--repeats", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["cpu"] == cpu_info()
    assert data["dims"] == {} and data["shapes"] == {}
    assert [p["params"]["batch_size"] for p in data["points"]] == [1, 2]
    assert all(len(p["repeats"]) == 1 and p["repeats"][0]["score"] > 0 for p in data["points"])
    assert "[2/2]" in done.stdout

    done = subprocess.run([*argv[:-4], "--repeats", "2", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    resumed = json.loads(out.read_text())["resumed"]
    assert len(resumed) == 1 and resumed[0]["cpu"] == cpu_info()
