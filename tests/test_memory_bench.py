"""bench/memory.py's measuring pieces: the sampler sees a process's anonymous peak (and not the
file pages it maps), and the study files it writes are valid specs. The 4 x 0.5B run itself is
a benchmark, not a test (bench/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

from optimizer.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("memory_bench", ROOT / "bench" / "memory.py")
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)

MB = 1 << 20


def test_the_sampler_sees_a_transient_anonymous_peak(tmp_path):
    code = ("import time, mmap; b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.2); "
            "del b; time.sleep(0.2)")
    r = memory.measure([sys.executable, "-c", code], tmp_path / "log")
    assert 300 * MB <= r["peak_anon"] < 400 * MB


def test_mapped_file_pages_are_not_counted_as_anonymous(tmp_path):
    data = tmp_path / "blob"
    data.write_bytes(b"\1" * (200 * MB))
    code = (f"import mmap, time; f = open({str(data)!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); "
            "s = sum(m[i] for i in range(0, len(m), 4096)); time.sleep(0.2)")
    r = memory.measure([sys.executable, "-c", code], tmp_path / "log")
    assert r["peak_rss"] >= 200 * MB > r["peak_anon"]


def test_the_study_files_are_valid_specs(tmp_path):
    pool = {"base": str(tmp_path / "base"), "checkpoints": [str(tmp_path / f"ckpt{i}") for i in range(4)],
            "include_path": str(tmp_path / "tasks"), "tasks": [{"task": "t1"}, {"task": "t2"}]}
    for method in memory.METHODS:
        path = memory.study_yaml(pool, method, 2, tmp_path)
        parsed = parse_spec(yaml.safe_load(path.read_text()), tmp_path)
        assert parsed.search.method == method and parsed.device == "cpu"
        assert parsed.search.n_trials == 4 + 1 + 2 and not parsed.search.baselines
