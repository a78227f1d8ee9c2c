"""Benchmark: mmcli classify against the transformers zero-shot pipeline, on one CPU checkpoint.

Prints figures, never asserts. Everything is built offline into bench/out/ (git-ignored) and reused:
a CLIP with the real ViT-B/32 architecture and random weights (its tokenizer gives each prompt word one
token, so prompts are as long as with CLIP's real vocabulary), and N deterministic 640x480 JPEGs.

In one run, interleaved over --rounds rounds (medians quoted):
  (a) ``mmcli classify DIR`` in a subprocess, end to end and steady state (records after the first
      batch, timed from the arrival of the first batch's records to the last record);
  (b) ``pipeline("zero-shot-image-classification")`` one image per call (on --baseline-images files);
  (c) the same pipeline over the list of paths with ``batch_size=16``;
plus the CPU's fp32 matmul rate, ``mmcli --help`` wall time, a cold one-image classify against its floor
(import torch + transformers, from_pretrained, one forward), peak RSS, and how much CPU other processes
took while each figure was measured (the machine is shared).

    HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 .venv/bin/python bench/classify.py [--quick]

Figures also go to bench/out/classify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TEMPLATE = "a photo of a {}."
LABELS = ["cat", "dog", "bird", "car", "tree", "house", "boat", "flower", "horse", "airplane"]
GFLOP_PER_IMAGE = 8.7  # ViT-B/32 vision tower at 224 px (2 x multiply-adds); checked with FlopCounterMode
REAL_CLIP_PROMPT_TOKENS = 8  # "a photo of a cat." with the real CLIP BPE: SOT a photo of a cat . EOT

TARGETS = {
    "ratio_pipeline_1": 3.0,  # mmcli / pipeline one image per call, at least
    "ratio_pipeline_16": 1.3,  # mmcli / pipeline batch_size=16, at least
    "matmul_share": 0.75,  # mmcli GFLOP/s / matmul GFLOP/s, at least
    "help_s": 0.3,  # mmcli --help wall time, at most
}

FLOOR_SCRIPT = """
import sys
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

directory, image, labels, template = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
model = CLIPModel.from_pretrained(directory).eval()
processor = CLIPProcessor.from_pretrained(directory)
inputs = processor(
    text=[template.format(label) for label in labels],
    images=Image.open(image).convert("RGB"),
    return_tensors="pt",
    padding=True,
)
with torch.inference_mode():
    probs = model(**inputs).logits_per_image.softmax(dim=-1)
print(probs.tolist())
"""


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# -- how busy the machine is with other work ---------------------------------------------------------


def _busy_seconds() -> float:
    """CPU-seconds all processes on the machine have used (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU-seconds of this process and of the children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Noise:
    """Measures the CPU other processes took during a span: 0.0 = quiet, 1.0 = one core's worth."""

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/stat")
        self.start()

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.busy0 = _busy_seconds() if self.available else 0.0
        self.own0 = _own_seconds()

    def cores(self) -> float | None:
        """Average number of cores other processes kept busy since start()."""
        if not self.available:
            return None
        wall = time.perf_counter() - self.t0
        foreign = (_busy_seconds() - self.busy0) - (_own_seconds() - self.own0)
        return max(0.0, foreign / wall) if wall > 0 else 0.0


WAITED = [0.0]  # seconds spent in wait_for_quiet, in all


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) for a second in which other processes use < ``threshold`` cores.

    Returns the seconds waited. The machine may be shared (tests running beside the bench): timing
    during a quiet spell makes the figures far more repeatable; after ``max_wait`` it goes on anyway.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        noise = Noise()
        time.sleep(1.0)
        cores = noise.cores()
        if cores is None or cores < threshold:
            break
    waited = time.perf_counter() - t0
    WAITED[0] += waited
    return waited


# -- fixtures ----------------------------------------------------------------------------------------


def prompt_words() -> list[str]:
    """The words of the prompts, so the checkpoint's tokenizer gives each one token, as CLIP's does.

    In prompt order, template first: clip_tokenizer chains each word's merges in turn, and with the labels
    first "horse" takes the pair "ho" before "photo" can (photo then splits in four).
    """
    prompts = (TEMPLATE.format(label).lower() for label in LABELS)
    return list(dict.fromkeys(w for prompt in prompts for w in re.findall(r"[a-z]+", prompt)))


def ensure_model(out: Path) -> Path:
    """The ViT-B/32 checkpoint in out/clip-vit-b32 (mmcli.testing.contrastive.build_clip_vit_b32), built once."""
    from mmcli.testing.contrastive import build_clip_vit_b32

    directory = out / "clip-vit-b32"
    stamp = directory / "bench-stamp.json"
    wanted = {"builder": "mmcli.testing.contrastive.build_clip_vit_b32", "seed": 0, "words": prompt_words()}
    built = stamp.is_file() and (directory / "model.safetensors").is_file()
    if built and json.loads(stamp.read_text()) == wanted:
        return directory
    tmp = out / "clip-vit-b32.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    log("building the ViT-B/32 checkpoint (random weights, offline) ...")
    build_clip_vit_b32(tmp, seed=0, words=wanted["words"])
    (tmp / "bench-stamp.json").write_text(json.dumps(wanted))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def _make_image(index: int, path: Path) -> None:
    """A deterministic 640x480 JPEG (quality 90): a noisy gradient under random ellipses and boxes."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(index)
    base = rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, 640)[None, :, None] * base
    pixels = (ramp + rng.normal(0.0, 20.0, (480, 640, 3))).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, 600)), int(rng.integers(0, 440))
        box = (x0, y0, x0 + int(rng.integers(10, 200)), y0 + int(rng.integers(10, 200)))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.integers(0, 2) else draw.rectangle)(box, fill=color)
    image.save(path, quality=90)


def ensure_images(out: Path, count: int) -> list[Path]:
    """out/images-COUNT/img_0000.jpg ...: exactly ``count`` images, each a function of its index."""
    directory = out / f"images-{count}"
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"img_{i:04d}.jpg" for i in range(count)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        log(f"writing {len(missing)} images to {directory} ...")
        for i, p in missing:
            _make_image(i, p)
    return paths


# -- (a) mmcli in a subprocess -----------------------------------------------------------------------


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_timed(cmd: Sequence[str], env: dict[str, str], stamp_lines: bool = False) -> dict[str, Any]:
    """Run ``cmd``; wall time, exit status, rusage, stdout lines (with arrival times if asked)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        assert proc.stdout is not None
        lines: list[bytes] = []
        stamps: list[float] = []
        if stamp_lines:
            for line in proc.stdout:
                stamps.append(time.perf_counter() - t0)
                lines.append(line)
        else:
            lines = proc.stdout.read().splitlines(keepends=True)
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {
        "wall_s": wall,
        "rc": proc.returncode,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "lines": lines,
        "stamps": stamps,
        "stderr": stderr,
    }


def mmcli_command(mmcli: str, inputs: Sequence[str], model: Path) -> list[str]:
    return [
        mmcli,
        "classify",
        *inputs,
        "--labels",
        ",".join(LABELS),
        "--template",
        TEMPLATE,
        "--model",
        str(model),
        "--format",
        "jsonl",
        "--quiet",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
    ]


def run_mmcli(mmcli: str, directory: Path, model: Path, count: int, env: dict[str, str]) -> dict[str, Any]:
    noise = Noise()
    run = run_timed(mmcli_command(mmcli, [str(directory)], model), env, stamp_lines=True)
    records = [json.loads(line) for line in run["lines"] if line.strip()]
    stamps: list[float] = run["stamps"]
    # Records come out a batch at a time (the writer flushes per batch): group them by arrival.
    bursts: list[list[float]] = []
    for t in stamps:
        if bursts and t - bursts[-1][-1] < 0.05:
            bursts[-1].append(t)
        else:
            bursts.append([t])
    steady = None
    if len(bursts) >= 2:
        after_first = len(stamps) - len(bursts[0])
        steady = after_first / (stamps[-1] - bursts[0][-1])
    ok = [r for r in records if "error" not in r]
    return {
        "rc": run["rc"],
        "wall_s": run["wall_s"],
        "records": len(records),
        "errors": len(records) - len(ok),
        "end_to_end_ips": count / run["wall_s"],
        "steady_ips": steady,
        "first_record_s": stamps[0] if stamps else None,
        "batch_sizes_seen": sorted({len(b) for b in bursts}),
        "cpu_s": run["cpu_s"],
        "cpu_s_per_image": run["cpu_s"] / count,
        "max_rss_mb": run["max_rss_mb"],
        "noise_cores": noise.cores(),
        "stderr_tail": run["stderr"][-500:] if run["rc"] else "",
        "scores": {r["input"]: r["scores"] for r in ok},
    }


# -- (b), (c) the transformers pipeline, in this process ---------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def run_pipeline(pipe: Any, files: list[str], batch_size: int | None) -> dict[str, Any]:
    """Time the pipeline over ``files``: one call per image (batch_size None) or one batched call."""
    kwargs: dict[str, Any] = {"candidate_labels": LABELS, "hypothesis_template": TEMPLATE}
    noise = Noise()
    cpu0 = time.process_time()
    if batch_size is None:
        seconds, results = timed(lambda: [pipe(f, **kwargs) for f in files])
    else:
        seconds, results = timed(lambda: pipe(files, batch_size=batch_size, **kwargs))
    cpu = time.process_time() - cpu0
    return {
        "images": len(files),
        "wall_s": seconds,
        "ips": len(files) / seconds,
        "cpu_s_per_image": cpu / len(files),
        "noise_cores": noise.cores(),
        "scores": {f: {d["label"]: d["score"] for d in r} for f, r in zip(files, results, strict=True)},
    }


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Median fp32 GFLOP/s of an n x n matrix product with the current torch thread count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.matmul(a, b)
    times = [timed(lambda: torch.matmul(a, b))[0] for _ in range(repeats)]
    return 2 * n**3 / median(times) / 1e9


def count_vision_gflop(model: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops() / 1e9


def text_tower_gflop(model: Any, texts: int, tokens: int) -> float:
    """GFLOP to embed ``texts`` prompts of ``tokens`` tokens (the pipeline pays this for every image)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, model.config.text_config.vocab_size - 2, (texts, tokens))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops() / 1e9


# -- start-up figures --------------------------------------------------------------------------------


def startup_figures(
    mmcli: str, model: Path, one: Path, env: dict[str, str], help_runs: int, cold_runs: int, quiet_wait: float
) -> dict[str, Any]:
    run_timed([mmcli, "--help"], env)  # warm the page cache
    wait_for_quiet(quiet_wait)
    noise = Noise()
    help_times = [run_timed([mmcli, "--help"], env)["wall_s"] for _ in range(help_runs)]
    help_noise = noise.cores()

    cold_cmd = [mmcli, "classify", str(one), "--labels", ",".join(LABELS), "--model", str(model)]
    floor_cmd = [sys.executable, "-c", FLOOR_SCRIPT, str(model), str(one), ",".join(LABELS), TEMPLATE]
    cold: list[dict[str, Any]] = []
    floor: list[dict[str, Any]] = []
    noise.start()
    for _ in range(cold_runs):  # interleaved, so drift hits both alike
        wait_for_quiet(quiet_wait)
        cold.append(run_timed(cold_cmd, env))
        floor.append(run_timed(floor_cmd, env))
    cold_noise = noise.cores()
    for name, runs in (("cold classify", cold), ("floor", floor)):
        if any(r["rc"] for r in runs):
            log(f"{name} failed: {runs[0]['stderr'][-400:]}")
    return {
        "help_s": median(help_times),
        "help_runs": help_times,
        "help_noise_cores": help_noise,
        "cold_s": median([r["wall_s"] for r in cold]),
        "cold_runs": [r["wall_s"] for r in cold],
        "cold_rc": [r["rc"] for r in cold],
        "cold_max_rss_mb": max(r["max_rss_mb"] for r in cold),
        "floor_s": median([r["wall_s"] for r in floor]),
        "floor_runs": [r["wall_s"] for r in floor],
        "floor_rc": [r["rc"] for r in floor],
        "floor_max_rss_mb": max(r["max_rss_mb"] for r in floor),
        "cold_noise_cores": cold_noise,
    }


# -- report ------------------------------------------------------------------------------------------


def verdict(value: float | None, target: float, at_least: bool = True) -> str:
    if value is None:
        return "n/a"
    return "MET" if (value >= target if at_least else value <= target) else "MISSED"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def score_agreement(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, Any]:
    common = [k for k in a if k in b]
    if not common:
        return {"images": 0}
    top_same = sum(max(a[k], key=a[k].__getitem__) == max(b[k], key=b[k].__getitem__) for k in common)
    diff = max(abs(a[k][label] - b[k][label]) for k in common for label in a[k])
    return {"images": len(common), "top1_same": top_same, "max_abs_score_diff": diff}


def report(fig: dict[str, Any]) -> str:
    r = fig["medians"]
    lines: list[str] = []
    add = lines.append
    add("")
    add(f"mmcli classify benchmark ({fig['config']['images']} images 640x480 JPEG q90, 10 labels, fp32 CPU,")
    add(f"  {fig['config']['threads']} torch threads, {fig['config']['rounds']} interleaved rounds, medians)")
    add(f"  cpu: {fig['env']['cpu']}; torch {fig['env']['torch']}, transformers {fig['env']['transformers']}")
    add(
        f"  checkpoint: {fig['env']['checkpoint']} ({fig['env']['params_m']:.0f} M params, "
        "mmcli.testing.contrastive.build_clip_vit_b32)"
    )
    add("")
    add(f"{'throughput':<44}{'images/s':>10}{'rounds':>28}{'CPU-s/img':>11}{'noise':>7}")
    rows = [
        ("mmcli classify, steady state", "mmcli_steady_ips", "mmcli", "steady_ips", "cpu_s_per_image"),
        ("mmcli classify, end to end (incl. start)", "mmcli_e2e_ips", "mmcli", "end_to_end_ips", None),
        (
            f"pipeline, 1 image per call ({fig['config']['baseline_images']} images)",
            "pipe1_ips",
            "pipe1",
            "ips",
            "cpu_s_per_image",
        ),
        ("pipeline, batch_size=16", "pipe16_ips", "pipe16", "ips", "cpu_s_per_image"),
    ]
    for title, key, series, field, cpu_field in rows:
        per_round = [x[field] for x in fig["rounds"][series]]
        spread = " ".join(fmt(v, ".2f") for v in per_round)
        cpu = fmt(median([x[cpu_field] for x in fig["rounds"][series]]), ".3f") if cpu_field else ""
        noise = [x["noise_cores"] for x in fig["rounds"][series] if x["noise_cores"] is not None]
        add(f"  {title:<42}{fmt(r[key]):>10}{spread:>28}{cpu:>11}{fmt(max(noise) if noise else None):>7}")
    add("  (noise: the most cores other processes kept busy during one round; 0 = quiet machine)")
    add("")
    add(f"{'target':<44}{'value':>10}{'target':>10}  verdict")
    t = fig["targets"]
    checks = [
        ("mmcli / pipeline 1-at-a-time (steady)", r["ratio_pipeline_1"], t["ratio_pipeline_1"], True, "x"),
        ("mmcli / pipeline batch16 (steady)", r["ratio_pipeline_16"], t["ratio_pipeline_16"], True, "x"),
        (
            "mmcli / pipeline 1-at-a-time (end to end)",
            r["ratio_pipeline_1_e2e"],
            t["ratio_pipeline_1"],
            True,
            "x",
        ),
        (
            "mmcli / pipeline batch16 (end to end)",
            r["ratio_pipeline_16_e2e"],
            t["ratio_pipeline_16"],
            True,
            "x",
        ),
        ("mmcli share of matmul GFLOP/s (steady)", r["matmul_share"], t["matmul_share"], True, "%"),
        ("mmcli --help wall time", r["help_s"], t["help_s"], False, "s"),
    ]
    for title, value, target, at_least, unit in checks:
        if unit == "%":
            shown, goal = fmt(None if value is None else 100 * value, ".0f") + "%", f">= {100 * target:.0f}%"
        elif unit == "x":
            shown, goal = fmt(value) + "x", f">= {target}x"
        else:
            shown, goal = fmt(value, ".3f") + "s", f"<= {target}s"
        add(f"  {title:<42}{shown:>10}{goal:>10}  {verdict(value, target, at_least)}")
    add("")
    add("compute")
    add(
        f"  fp32 matmul 2048x2048, {fig['config']['threads']} threads   {r['matmul_gflops']:8.1f} GFLOP/s (per round: "
        + " ".join(f"{v:.0f}" for v in fig["rounds"]["matmul_gflops"])
        + ")"
    )
    add(
        f"  vision tower FLOPs (FlopCounterMode)  {fig['env']['gflop_per_image_counted']:8.2f} GFLOP/image "
        f"(figures use {GFLOP_PER_IMAGE})"
    )
    add(f"  mmcli achieved (steady)              {fmt(r['mmcli_gflops'], '8.1f')} GFLOP/s")
    add("")
    add("start-up (subprocess wall time, warm page cache)")
    s = fig["startup"]
    add(f"  mmcli --help                          {s['help_s']:8.3f} s  (median of {len(s['help_runs'])})")
    add(
        f"  mmcli classify one.jpg (cold process) {s['cold_s']:8.3f} s  (median of {len(s['cold_runs'])}; "
        f"peak RSS {s['cold_max_rss_mb']:.0f} MB)"
    )
    add(
        f"  floor: import + from_pretrained + 1 fwd {s['floor_s']:6.3f} s  (peak RSS {s['floor_max_rss_mb']:.0f} MB)"
    )
    add(f"  mmcli over the floor                  {s['cold_s'] - s['floor_s']:+8.3f} s")
    add("")
    add("other")
    add(
        f"  mmcli full run: peak RSS {r['mmcli_max_rss_mb']:.0f} MB, first record after "
        f"{fmt(r['mmcli_first_record_s'])} s, batch sizes seen {fig['rounds']['mmcli'][0]['batch_sizes_seen']}, "
        f"errors {fig['rounds']['mmcli'][0]['errors']}"
    )
    agree = fig["agreement"]
    if agree.get("images"):
        add(
            f"  mmcli vs pipeline-16 scores: top-1 same on {agree['top1_same']}/{agree['images']}, "
            f"max |diff| {agree['max_abs_score_diff']:.2e}"
        )
    tk = fig["env"]["prompt_tokens"]
    g = fig["env"]["pipeline_gflop"]
    add(
        f"  prompts: {tk} tokens (CLIP's own vocabulary: ~{REAL_CLIP_PROMPT_TOKENS}). The pipeline encodes the "
        f"10 prompts on every call ({g['text_10_prompts']:.1f} GFLOP;"
    )
    add(
        f"  vision {g['vision_per_image']:.1f} GFLOP/image), once per batch when batched; mmcli once per run."
        + (" LONGER THAN CLIP'S: the pipeline is penalised." if tk > REAL_CLIP_PROMPT_TOKENS else "")
    )
    noise = fig["noise"]
    add(
        f"  other processes used {noise['foreign_cores_mean']:.2f} cores on average over the whole bench "
        f"({fig['total_s']:.0f} s, {noise['waited_for_quiet_s']:.0f} s of it waiting for quiet spells)"
    )
    add(f"  load average before/after {noise['load_before']} / {noise['load_after']}")
    add("")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=None, help="images to classify (default 256)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 3)")
    parser.add_argument(
        "--baseline-images",
        type=int,
        default=None,
        help="images for the slow one-image-per-call pipeline (default min(64, --images))",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads everywhere (default 2)")
    parser.add_argument("--help-runs", type=int, default=None, help="mmcli --help runs (default 10)")
    parser.add_argument("--cold-runs", type=int, default=None, help="cold classify / floor runs (default 3)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each timing, wait up to this many seconds for other processes to go quiet (default 30)",
    )
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    parser.add_argument("--out", type=Path, default=OUT, help="cache and results directory (bench/out)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.images = args.images or (32 if quick else 256)
    args.rounds = args.rounds or (1 if quick else 3)
    args.baseline_images = min(args.baseline_images or (8 if quick else 64), args.images)
    args.help_runs = args.help_runs or (3 if quick else 10)
    args.cold_runs = args.cold_runs or (1 if quick else 3)
    if args.quiet_wait is None:
        args.quiet_wait = 5.0 if quick else 30.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()
    whole = Noise()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    env = child_env(args.threads)
    mmcli = str(Path(sys.executable).parent / "mmcli")
    if not Path(mmcli).exists():
        mmcli = shutil.which("mmcli") or "mmcli"

    model_dir = ensure_model(out)
    paths = ensure_images(out, args.images)
    files = [str(p) for p in paths]
    image_dir = paths[0].parent
    one = paths[0]

    log("loading the transformers pipeline ...")
    from transformers import pipeline

    pipe = pipeline("zero-shot-image-classification", model=str(model_dir), device="cpu", dtype=torch.float32)
    prompts = [TEMPLATE.format(label) for label in LABELS]
    prompt_tokens = len(pipe.tokenizer(prompts, padding=True)["input_ids"][0])
    params_m = sum(p.numel() for p in pipe.model.parameters()) / 1e6
    gflop_counted = count_vision_gflop(pipe.model)

    log("warming up ...")
    run_timed(mmcli_command(mmcli, files[:4], model_dir), env)
    pipe(files[0], candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    pipe(files[1], candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    pipe(files[:16], candidate_labels=LABELS, hypothesis_template=TEMPLATE, batch_size=16)

    series = ("mmcli", "pipe16", "pipe1")
    rounds: dict[str, list[Any]] = {name: [] for name in (*series, "matmul_gflops")}
    for i in range(args.rounds):
        log(f"round {i + 1}/{args.rounds}: mmcli classify ({args.images} images) ...")
        wait_for_quiet(args.quiet_wait)
        m = run_mmcli(mmcli, image_dir, model_dir, args.images, env)
        if m["rc"] != 0 or m["errors"]:
            log(f"mmcli exit {m['rc']}, {m['errors']} error records: {m['stderr_tail']}")
        rounds["mmcli"].append(m)
        log(f"  {m['steady_ips'] or 0:.2f} img/s steady, {m['end_to_end_ips']:.2f} end to end")
        for name, batch, subset in (("pipe16", 16, files), ("pipe1", None, files[: args.baseline_images])):
            what = f"batch_size={batch}" if batch else "1 per call"
            log(f"round {i + 1}/{args.rounds}: pipeline {what} ({len(subset)} images) ...")
            wait_for_quiet(args.quiet_wait)
            rounds[name].append(run_pipeline(pipe, subset, batch))
            log(f"  {rounds[name][-1]['ips']:.2f} img/s")
        wait_for_quiet(args.quiet_wait)
        rounds["matmul_gflops"].append(matmul_gflops())
        log(f"  matmul {rounds['matmul_gflops'][-1]:.0f} GFLOP/s")

    text_gflop = text_tower_gflop(pipe.model, len(LABELS), prompt_tokens)

    log("start-up figures ...")
    startup = startup_figures(mmcli, model_dir, one, env, args.help_runs, args.cold_runs, args.quiet_wait)

    def med(series: str, field: str) -> float | None:
        values = [x[field] for x in rounds[series] if x[field] is not None]
        return median(values) if values else None

    steady, e2e = med("mmcli", "steady_ips"), med("mmcli", "end_to_end_ips")
    pipe1, pipe16 = med("pipe1", "ips"), med("pipe16", "ips")
    matmul = median(rounds["matmul_gflops"])

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    medians = {
        "mmcli_steady_ips": steady,
        "mmcli_e2e_ips": e2e,
        "mmcli_first_record_s": med("mmcli", "first_record_s"),
        "mmcli_cpu_s_per_image": med("mmcli", "cpu_s_per_image"),
        "mmcli_max_rss_mb": max(x["max_rss_mb"] for x in rounds["mmcli"]),
        "pipe1_ips": pipe1,
        "pipe16_ips": pipe16,
        "ratio_pipeline_1": ratio(steady, pipe1),
        "ratio_pipeline_16": ratio(steady, pipe16),
        "ratio_pipeline_1_e2e": ratio(e2e, pipe1),
        "ratio_pipeline_16_e2e": ratio(e2e, pipe16),
        "matmul_gflops": matmul,
        "mmcli_gflops": steady * GFLOP_PER_IMAGE if steady else None,
        "matmul_share": steady * GFLOP_PER_IMAGE / matmul if steady else None,
        "help_s": startup["help_s"],
    }
    agreement = score_agreement(rounds["mmcli"][0]["scores"], rounds["pipe16"][0]["scores"])
    for name in series:
        for x in rounds[name]:
            x.pop("scores", None)
    total = time.perf_counter() - started
    figures: dict[str, Any] = {
        "config": {
            "images": args.images,
            "baseline_images": args.baseline_images,
            "rounds": args.rounds,
            "threads": args.threads,
            "labels": LABELS,
            "template": TEMPLATE,
            "quick": args.quick,
            "quiet_wait_s": args.quiet_wait,
        },
        "env": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "checkpoint": str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir),
            "params_m": params_m,
            "gflop_per_image_counted": gflop_counted,
            "prompt_tokens": prompt_tokens,
            "pipeline_gflop": {
                "vision_per_image": gflop_counted,
                "text_10_prompts": text_gflop,
            },
        },
        "targets": TARGETS,
        "medians": medians,
        "verdicts": {
            "ratio_pipeline_1": verdict(medians["ratio_pipeline_1"], TARGETS["ratio_pipeline_1"]),
            "ratio_pipeline_16": verdict(medians["ratio_pipeline_16"], TARGETS["ratio_pipeline_16"]),
            "matmul_share": verdict(medians["matmul_share"], TARGETS["matmul_share"]),
            "help_s": verdict(medians["help_s"], TARGETS["help_s"], at_least=False),
        },
        "rounds": rounds,
        "startup": startup,
        "agreement": agreement,
        "noise": {
            "foreign_cores_mean": whole.cores() or 0.0,
            "waited_for_quiet_s": WAITED[0],
            "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()],
        },
        "total_s": total,
    }
    print(report(figures))
    (out / "classify.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    log(f"figures written to {out / 'classify.json'} ({total:.0f} s in all)")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


if __name__ == "__main__":
    sys.exit(main())
