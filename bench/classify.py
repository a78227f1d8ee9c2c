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
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import classify_runs as runs  # bench/classify_runs.py: the measurements
import harness  # bench/harness.py: the model, the images, the timing, the quiet-machine check
from harness import LABELS, OUT, ROOT, TEMPLATE, fmt, log, median_of, row, verdict

GFLOP_PER_IMAGE = 8.7  # ViT-B/32 vision tower at 224 px (2 x multiply-adds); checked with FlopCounterMode
REAL_CLIP_PROMPT_TOKENS = 8  # "a photo of a cat." with the real CLIP BPE: SOT a photo of a cat . EOT

TARGETS = {
    "ratio_pipeline_1": 3.0,  # mmcli / pipeline one image per call, at least
    "ratio_pipeline_16": 1.3,  # mmcli / pipeline batch_size=16, at least
    "matmul_share": 0.75,  # mmcli GFLOP/s / matmul GFLOP/s, at least
    "help_s": 0.3,  # mmcli --help wall time, at most
}
SERIES = ("mmcli", "pipe16", "pipe1")
# the sizes --quick shrinks: option -> (with --quick, without); 0 or unset takes them (--quiet-wait: unset)
SIZES = {
    "images": (32, 256),
    "rounds": (1, 3),
    "baseline_images": (8, 64),
    "help_runs": (3, 10),
    "cold_runs": (1, 3),
    "quiet_wait": (5.0, 30.0),
}


# -- report ------------------------------------------------------------------------------------------

# title, median, its rounds' series, field and CPU field
THROUGHPUT_ROWS = [
    ("mmcli classify, steady state", "mmcli_steady_ips", "mmcli", "steady_ips", "cpu_s_per_image"),
    ("mmcli classify, end to end (incl. start)", "mmcli_e2e_ips", "mmcli", "end_to_end_ips", None),
    ("pipeline, 1 image per call ({baseline} images)", "pipe1_ips", "pipe1", "ips", "cpu_s_per_image"),
    ("pipeline, batch_size=16", "pipe16_ips", "pipe16", "ips", "cpu_s_per_image"),
]
# title, median, target, at least (else at most), unit
TARGET_ROWS = [
    ("mmcli / pipeline 1-at-a-time (steady)", "ratio_pipeline_1", "ratio_pipeline_1", True, "x"),
    ("mmcli / pipeline batch16 (steady)", "ratio_pipeline_16", "ratio_pipeline_16", True, "x"),
    ("mmcli / pipeline 1-at-a-time (end to end)", "ratio_pipeline_1_e2e", "ratio_pipeline_1", True, "x"),
    ("mmcli / pipeline batch16 (end to end)", "ratio_pipeline_16_e2e", "ratio_pipeline_16", True, "x"),
    ("mmcli share of matmul GFLOP/s (steady)", "matmul_share", "matmul_share", True, "%"),
    ("mmcli --help wall time", "help_s", "help_s", False, "s"),
]


def report(fig: dict[str, Any]) -> str:
    sections = (
        report_heading,
        report_throughput,
        report_targets,
        report_compute,
        report_startup,
        report_other,
    )
    return "\n".join(["", *(line for section in sections for line in [*section(fig), ""])])


def report_heading(fig: dict[str, Any]) -> list[str]:
    config, env = fig["config"], fig["env"]
    return [
        f"mmcli classify benchmark ({config['images']} images 640x480 JPEG q90, 10 labels, fp32 CPU,",
        f"  {config['threads']} torch threads, {config['rounds']} interleaved rounds, medians)",
        f"  cpu: {env['cpu']}; torch {env['torch']}, transformers {env['transformers']}",
        f"  checkpoint: {env['checkpoint']} ({env['params_m']:.0f} M params, "
        "mmcli.testing.contrastive.build_clip_vit_b32)",
    ]


def report_throughput(fig: dict[str, Any]) -> list[str]:
    r, widths = fig["medians"], (42, 10, 28, 11, 7)
    lines = [row(("throughput", "images/s", "rounds", "CPU-s/img", "noise"), (44, *widths[1:]), sep="")]
    for title, key, series, field, cpu_field in THROUGHPUT_ROWS:
        title = title.format(baseline=fig["config"]["baseline_images"])
        per_round = fig["rounds"][series]
        spread = " ".join(fmt(x[field], ".2f") for x in per_round)
        cpu = fmt(harness.median([x[cpu_field] for x in per_round]), ".3f") if cpu_field else ""
        noise = [x["noise_cores"] for x in per_round if x["noise_cores"] is not None]
        cells = (title, fmt(r[key]), spread, cpu, fmt(max(noise) if noise else None))
        lines.append("  " + row(cells, widths, sep=""))
    lines.append("  (noise: the most cores other processes kept busy during one round; 0 = quiet machine)")
    return lines


def report_targets(fig: dict[str, Any]) -> list[str]:
    r, t = fig["medians"], fig["targets"]
    lines = [row(("target", "value", "target"), (44, 10, 10), sep="") + "  verdict"]
    for title, key, target_key, at_least, unit in TARGET_ROWS:
        value, target = r[key], t[target_key]
        if unit == "%":
            shown, goal = fmt(None if value is None else 100 * value, ".0f") + "%", f">= {100 * target:.0f}%"
        elif unit == "x":
            shown, goal = fmt(value) + "x", f">= {target}x"
        else:
            shown, goal = fmt(value, ".3f") + "s", f"<= {target}s"
        lines.append(
            "  " + row((title, shown, goal), (42, 10, 10), sep="") + f"  {verdict(value, target, at_least)}"
        )
    return lines


def report_compute(fig: dict[str, Any]) -> list[str]:
    r, threads = fig["medians"], fig["config"]["threads"]
    per_round = " ".join(f"{v:.0f}" for v in fig["rounds"]["matmul_gflops"])
    return [
        "compute",
        f"  fp32 matmul 2048x2048, {threads} threads   {r['matmul_gflops']:8.1f} GFLOP/s (per round: {per_round})",
        f"  vision tower FLOPs (FlopCounterMode)  {fig['env']['gflop_per_image_counted']:8.2f} GFLOP/image "
        f"(figures use {GFLOP_PER_IMAGE})",
        f"  mmcli achieved (steady)              {fmt(r['mmcli_gflops'], '8.1f')} GFLOP/s",
    ]


def report_startup(fig: dict[str, Any]) -> list[str]:
    s = fig["startup"]
    return [
        "start-up (subprocess wall time, warm page cache)",
        f"  mmcli --help                          {s['help_s']:8.3f} s  (median of {len(s['help_runs'])})",
        f"  mmcli classify one.jpg (cold process) {s['cold_s']:8.3f} s  (median of {len(s['cold_runs'])}; "
        f"peak RSS {s['cold_max_rss_mb']:.0f} MB)",
        f"  floor: import + from_pretrained + 1 fwd {s['floor_s']:6.3f} s  (peak RSS {s['floor_max_rss_mb']:.0f} MB)",
        f"  mmcli over the floor                  {s['cold_s'] - s['floor_s']:+8.3f} s",
    ]


def report_other(fig: dict[str, Any]) -> list[str]:
    r, first, agree = fig["medians"], fig["rounds"]["mmcli"][0], fig["agreement"]
    lines = [
        "other",
        f"  mmcli full run: peak RSS {r['mmcli_max_rss_mb']:.0f} MB, first record after "
        f"{fmt(r['mmcli_first_record_s'])} s, batch sizes seen {first['batch_sizes_seen']}, "
        f"errors {first['errors']}",
    ]
    if agree.get("images"):
        lines.append(
            f"  mmcli vs pipeline-16 scores: top-1 same on {agree['top1_same']}/{agree['images']}, "
            f"max |diff| {agree['max_abs_score_diff']:.2e}"
        )
    tk, g, noise = fig["env"]["prompt_tokens"], fig["env"]["pipeline_gflop"], fig["noise"]
    longer = " LONGER THAN CLIP'S: the pipeline is penalised." if tk > REAL_CLIP_PROMPT_TOKENS else ""
    return [
        *lines,
        f"  prompts: {tk} tokens (CLIP's own vocabulary: ~{REAL_CLIP_PROMPT_TOKENS}). The pipeline encodes the "
        f"10 prompts on every call ({g['text_10_prompts']:.1f} GFLOP;",
        f"  vision {g['vision_per_image']:.1f} GFLOP/image), once per batch when batched; mmcli once per run."
        + longer,
        f"  other processes used {noise['foreign_cores_mean']:.2f} cores on average over the whole bench "
        f"({fig['total_s']:.0f} s, {noise['waited_for_quiet_s']:.0f} s of it waiting for quiet spells)",
        f"  load average before/after {noise['load_before']} / {noise['load_after']}",
    ]


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def size(flag: str, help: str, kind: type = int) -> None:  # a SIZES option: None until resolved
        parser.add_argument(flag, type=kind, default=None, help=help)

    size("--images", "images to classify (default 256)")
    size("--rounds", "interleaved timing rounds (default 3)")
    size("--baseline-images", "images for the slow one-image-per-call pipeline (default min(64, --images))")
    parser.add_argument("--threads", type=int, default=2, help="torch threads everywhere (default 2)")
    size("--help-runs", "mmcli --help runs (default 10)")
    size("--cold-runs", "cold classify / floor runs (default 3)")
    size(
        "--quiet-wait",
        "before each timing, wait up to this many seconds for other processes to go quiet (default 30)",
        float,
    )
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    parser.add_argument("--out", type=Path, default=OUT, help="cache and results directory (bench/out)")
    args = parser.parse_args(argv)
    for name, (quick, full) in SIZES.items():
        value = getattr(args, name)
        if value is None or (value == 0 and isinstance(quick, int)):
            setattr(args, name, quick if args.quick else full)
    args.baseline_images = min(args.baseline_images, args.images)
    return args


def load_pipeline(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The transformers pipeline on the checkpoint, and what the report says of it."""
    import torch
    from transformers import pipeline

    log("loading the transformers pipeline ...")
    pipe = pipeline("zero-shot-image-classification", model=str(model_dir), device="cpu", dtype=torch.float32)
    prompts = [TEMPLATE.format(label) for label in LABELS]
    return pipe, {
        "prompt_tokens": len(pipe.tokenizer(prompts, padding=True)["input_ids"][0]),
        "params_m": sum(p.numel() for p in pipe.model.parameters()) / 1e6,
        "gflop_counted": runs.count_vision_gflop(pipe.model),
    }


def measure_rounds(
    args: argparse.Namespace, mmcli: str, pipe: Any, model_dir: Path, files: list[str], env: dict[str, str]
) -> dict[str, list[Any]]:
    """The warm-up, then (a), (c), (b) and the matmul rate in each of --rounds rounds."""
    log("warming up ...")
    harness.run_timed(runs.mmcli_command(mmcli, files[:4], model_dir), env)
    pipe(files[0], candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    pipe(files[1], candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    pipe(files[:16], candidate_labels=LABELS, hypothesis_template=TEMPLATE, batch_size=16)
    rounds: dict[str, list[Any]] = {name: [] for name in (*SERIES, "matmul_gflops")}
    for i in range(args.rounds):
        log(f"round {i + 1}/{args.rounds}: mmcli classify ({args.images} images) ...")
        harness.wait_for_quiet(args.quiet_wait)
        m = runs.run_mmcli(mmcli, Path(files[0]).parent, model_dir, args.images, env)
        if m["rc"] != 0 or m["errors"]:
            log(f"mmcli exit {m['rc']}, {m['errors']} error records: {m['stderr_tail']}")
        rounds["mmcli"].append(m)
        log(f"  {m['steady_ips'] or 0:.2f} img/s steady, {m['end_to_end_ips']:.2f} end to end")
        for name, batch, subset in (("pipe16", 16, files), ("pipe1", None, files[: args.baseline_images])):
            what = f"batch_size={batch}" if batch else "1 per call"
            log(f"round {i + 1}/{args.rounds}: pipeline {what} ({len(subset)} images) ...")
            harness.wait_for_quiet(args.quiet_wait)
            rounds[name].append(runs.run_pipeline(pipe, subset, batch))
            log(f"  {rounds[name][-1]['ips']:.2f} img/s")
        harness.wait_for_quiet(args.quiet_wait)
        rounds["matmul_gflops"].append(runs.matmul_gflops())
        log(f"  matmul {rounds['matmul_gflops'][-1]:.0f} GFLOP/s")
    return rounds


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def medians(rounds: dict[str, list[Any]], startup: dict[str, Any]) -> dict[str, Any]:
    """The figures the report quotes, from the rounds' medians."""
    steady, e2e = median_of(rounds["mmcli"], "steady_ips"), median_of(rounds["mmcli"], "end_to_end_ips")
    pipe1, pipe16 = median_of(rounds["pipe1"], "ips"), median_of(rounds["pipe16"], "ips")
    matmul = harness.median(rounds["matmul_gflops"])
    return {
        "mmcli_steady_ips": steady,
        "mmcli_e2e_ips": e2e,
        "mmcli_first_record_s": median_of(rounds["mmcli"], "first_record_s"),
        "mmcli_cpu_s_per_image": median_of(rounds["mmcli"], "cpu_s_per_image"),
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


def environment(model_dir: Path, facts: dict[str, Any], text_gflop: float) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpu": harness.cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "checkpoint": str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir),
        "params_m": facts["params_m"],
        "gflop_per_image_counted": facts["gflop_counted"],
        "prompt_tokens": facts["prompt_tokens"],
        "pipeline_gflop": {
            "vision_per_image": facts["gflop_counted"],
            "text_10_prompts": text_gflop,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    started, load_before, whole = time.perf_counter(), os.getloadavg(), harness.Noise()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    env = harness.child_env(args.threads)
    mmcli = harness.mmcli_script()
    model_dir = harness.ensure_model(out)
    paths = harness.ensure_images(out, args.images)
    pipe, facts = load_pipeline(model_dir)
    rounds = measure_rounds(args, mmcli, pipe, model_dir, [str(p) for p in paths], env)
    text_gflop = runs.text_tower_gflop(pipe.model, len(LABELS), facts["prompt_tokens"])
    log("start-up figures ...")
    startup = runs.startup_figures(
        mmcli, model_dir, paths[0], env, args.help_runs, args.cold_runs, args.quiet_wait
    )
    figures = {
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
        "env": environment(model_dir, facts, text_gflop),
        "targets": TARGETS,
        "medians": medians(rounds, startup),
    }
    return finish(figures, rounds, startup, out, started, whole, load_before)


def finish(
    figures: dict[str, Any],
    rounds: dict[str, list[Any]],
    startup: dict[str, Any],
    out: Path,
    started: float,
    whole: harness.Noise,
    load_before: tuple[float, float, float],
) -> int:
    """The verdicts, the agreement and the noise added to the figures; the report printed and written."""
    m = figures["medians"]
    agreement = runs.score_agreement(rounds["mmcli"][0]["scores"], rounds["pipe16"][0]["scores"])
    for name in SERIES:
        for x in rounds[name]:
            x.pop("scores", None)
    total = time.perf_counter() - started
    figures["verdicts"] = {
        "ratio_pipeline_1": verdict(m["ratio_pipeline_1"], TARGETS["ratio_pipeline_1"]),
        "ratio_pipeline_16": verdict(m["ratio_pipeline_16"], TARGETS["ratio_pipeline_16"]),
        "matmul_share": verdict(m["matmul_share"], TARGETS["matmul_share"]),
        "help_s": verdict(m["help_s"], TARGETS["help_s"], at_least=False),
    }
    figures |= {"rounds": rounds, "startup": startup, "agreement": agreement}
    figures["noise"] = {
        "foreign_cores_mean": whole.cores() or 0.0,
        "waited_for_quiet_s": harness.WAITED[0],
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    figures["total_s"] = total
    print(report(figures))
    harness.save_json(out / "classify.json", figures)
    log(f"figures written to {out / 'classify.json'} ({total:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
