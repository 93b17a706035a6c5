"""Peak anonymous memory of a study, per merge method, against the floor: pool + base + one model
(evaluators/streaming.resident_bytes, the number the GPU placement rule uses).

The bench builds (once, cached in --root) a pool of 4 checkpoints + a base with Qwen2.5-0.5B's
shape as a Llama (24 layers, width 896, 151,936-token tied embedding: 494M parameters, bf16,
~0.99 GB each) and two tiny local multiple-choice tasks, then runs `mergeopt run` once per method
in a fresh process (SQLite, CPU, no baselines, a few search trials and the validation phase)
while sampling that process's RssAnon from /proc every few ms. Anonymous memory, not RSS: the
safetensors files are read through mmap, and their page-cache pages are the kernel's to drop.

A separate process that only imports what a study imports (torch, transformers, lm-eval, the
service) gives the libraries' own share, reported beside the ratio.

    python bench/memory.py [--root /tmp/mergeopt-memory] [--methods linear task_arithmetic ties
                           dare_ties dare_linear] [--trials 2] [--layers 24] [--budget 1.1x]

--budget: the study's MERGEOPT_MEMORY_BUDGET, as a multiple of the floor ("1.1x": tight, no room
for caches beside the bounded paths' scratch) or as the variable takes it ("12GiB", "0.7");
unset: the study's default (70% of the memory available when it starts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.methods import METHOD_INFO  # noqa: E402

METHODS = list(METHOD_INFO)
GOALS = {"linear": 1.2}  # the task-vector methods: 1.3
IMPORTS = ("import torch, transformers, lm_eval.evaluator; import service.cli.main, service.studies.runs, "
           "evaluators.engine, evaluators.scoring.suite_scorer")


def read_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (RssAnon, RssFile, VmHWM...) in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


class PeakSampler(threading.Thread):
    """Highest RssAnon of one process, polled every ``interval`` s until it exits. Allocations
    are touched as they are filled, so a transient buffer lives long enough to be seen."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_anon = self.peak_rss = 0
        self.peak_at = 0.0
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while True:
            try:
                st = read_status(self.pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            if "RssAnon" not in st:  # a zombie has no memory lines
                return
            anon = st.get("RssAnon", 0)
            if anon > self.peak_anon:
                self.peak_anon, self.peak_at = anon, time.perf_counter() - self.t0
            self.peak_rss = max(self.peak_rss, st.get("VmHWM", 0))
            time.sleep(self.interval)


def measure(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env or os.environ.copy(), cwd=ROOT)
        sampler = PeakSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.join(timeout=5)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... exited {rc}; see {log}:\n{log.read_text()[-3000:]}")
    return {"peak_anon": sampler.peak_anon, "peak_rss": sampler.peak_rss, "peak_at_s": round(sampler.peak_at, 1),
            "wall_s": round(time.perf_counter() - sampler.t0, 1)}


def model_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16", rms_norm_eps=1e-6,
    )


def build_pool(root: Path, layers: int, n_checkpoints: int = 4) -> dict:
    """Base = random init; checkpoint i = base + a small perturbation. Tensor by tensor, so the
    builder never holds more than one checkpoint's tensor at a time."""
    manifest = root / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if data.get("layers") == layers and len(data["checkpoints"]) == n_checkpoints:
            return data
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    from evaluators.demo.pool import make_tokenizer
    from evaluators.demo.tasks import write_tasks

    root.mkdir(parents=True, exist_ok=True)
    config = model_config(layers)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(config).state_dict().items() if n != "lm_head.weight"}
    tok = make_tokenizer()
    names = ["base"] + [f"ckpt{i}" for i in range(n_checkpoints)]
    for i, name in enumerate(names):
        folder = root / name
        folder.mkdir(exist_ok=True)
        gen = torch.Generator().manual_seed(1234 + i)
        base_gen = torch.Generator().manual_seed(1234)
        tensors = {}
        for n, shape in shapes.items():
            ones = n.endswith("norm.weight")
            t = torch.ones(shape) if ones else torch.randn(shape, generator=base_gen) * 0.02
            if i:
                t += torch.randn(shape, generator=gen) * 0.002
            tensors[n] = t.to(torch.bfloat16)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        del tensors
        config.save_pretrained(folder)
        tok.save_pretrained(folder)
        print(f"  built {folder}", flush=True)
    tasks = write_tasks(root / "tasks", n_docs=8, seed=0)
    data = {"layers": layers, "base": str(root / "base"), "include_path": str(root / "tasks"),
            "checkpoints": [str(root / n) for n in names[1:]], "tasks": tasks[:2],
            "params": sum(s.numel() for s in shapes.values())}
    manifest.write_text(json.dumps(data))
    return data


def study_yaml(pool: dict, method: str, trials: int, workdir: Path) -> Path:
    import yaml

    spec = {
        "name": f"memory-{method}",
        "pool": {"base": pool["base"], "checkpoints": [{"name": Path(p).name, "path": p} for p in pool["checkpoints"]]},
        "suite": {"include_path": pool["include_path"], "tasks": pool["tasks"], "validation": 0.5, "batch_size": 8},
        "search": {"method": method, "n_trials": len(pool["checkpoints"]) + 1 + trials, "baselines": False},
        "storage": f"sqlite:///{workdir / f'memory-{method}.db'}",
        "device": "cpu",
    }
    path = workdir / f"memory-{method}.yaml"
    (workdir / f"memory-{method}.db").unlink(missing_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/mergeopt-memory"), help="pool cache and study files")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--trials", type=int, default=2, help="search trials after the references")
    ap.add_argument("--layers", type=int, default=24, help="24: Qwen2.5-0.5B's depth")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--budget", help="MERGEOPT_MEMORY_BUDGET of the studies: '1.1x' (of the floor) or its own forms")
    args = ap.parse_args()
    if not Path("/proc/self/status").exists():
        raise SystemExit("needs Linux's /proc to read anonymous memory")

    from evaluators.merging.streaming import resident_bytes

    print(f"[1/3] pool in {args.root} (built once)", flush=True)
    pool = build_pool(args.root, args.layers)
    n, numel = len(pool["checkpoints"]), pool["params"]
    floor = resident_bytes(n, numel, 2)
    gb = 1e9
    print(f"      {n} x {numel / 1e6:.1f}M bf16 + base: floor (pool + base + one model) {floor / gb:.2f} GB", flush=True)
    print("[2/3] the libraries alone", flush=True)
    libs = measure([sys.executable, "-c", IMPORTS], args.root / "imports.log")
    print(f"      imports: {libs['peak_anon'] / gb:.2f} GB anonymous", flush=True)
    print("[3/3] one study per method", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    if args.budget:
        budget = str(int(float(args.budget[:-1]) * floor)) if args.budget.endswith("x") else args.budget
        env["MERGEOPT_MEMORY_BUDGET"] = budget
        print(f"      MERGEOPT_MEMORY_BUDGET={budget} ({args.budget})", flush=True)
    rows = []
    for method in args.methods:
        spec = study_yaml(pool, method, args.trials, args.root)
        r = measure([sys.executable, "-m", "service.cli", "run", str(spec), "-q"], args.root / f"{method}.log", env)
        goal = GOALS.get(method, 1.3)
        ratio = r["peak_anon"] / floor
        row = {"method": method, **r, "floor": floor, "ratio": round(ratio, 3),
               "ratio_without_libraries": round((r["peak_anon"] - libs["peak_anon"]) / floor, 3),
               "goal": goal, "met": ratio <= goal}
        rows.append(row)
        print(f"      {method}: peak anonymous {r['peak_anon'] / gb:.2f} GB at {r['peak_at_s']} s "
              f"({ratio:.2f}x the floor, goal <= {goal}x: {'met' if row['met'] else 'NOT met'}); "
              f"peak RSS incl. file pages {r['peak_rss'] / gb:.2f} GB; {r['wall_s']} s", flush=True)
    print("\n| method | peak anonymous GB | x floor | x floor less libraries | goal | peak RSS GB | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['peak_anon'] / gb:.2f} | {r['ratio']:.2f} | {r['ratio_without_libraries']:.2f} | "
              f"<= {r['goal']} {'met' if r['met'] else 'NOT met'} | {r['peak_rss'] / gb:.2f} | {r['wall_s']} |")
    print(f"\nfloor {floor / gb:.2f} GB ({n} checkpoints + base + model, {numel / 1e6:.1f}M bf16 each); "
          f"libraries alone {libs['peak_anon'] / gb:.2f} GB")
    if args.json:
        args.json.write_text(json.dumps({"floor": floor, "libraries": libs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
