"""The measurements of bench/classify.py (mmcli in a subprocess, the pipeline in this process, the CPU's
matmul rate, FLOP counts, start-up); not a script."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import LABELS, TEMPLATE, Noise, log, median, run_timed, timed, wait_for_quiet

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


# -- (a) mmcli in a subprocess -----------------------------------------------------------------------


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
        "--no-cache",  # every round computes, as the reference does (the embedding cache is bench/cache.py's)
    ]


def steady_rate(stamps: list[float]) -> tuple[float | None, list[list[float]]]:
    """Records/s after the first batch, from the records' arrival times; and the batches (bursts).

    Records come out a batch at a time (the writer flushes per batch): they are grouped by arrival, and the
    rate timed from the arrival of the first batch's records to the last record. None for one batch.
    """
    bursts: list[list[float]] = []
    for t in stamps:
        if bursts and t - bursts[-1][-1] < 0.05:
            bursts[-1].append(t)
        else:
            bursts.append([t])
    if len(bursts) < 2:
        return None, bursts
    return (len(stamps) - len(bursts[0])) / (stamps[-1] - bursts[0][-1]), bursts


def run_mmcli(mmcli: str, directory: Path, model: Path, count: int, env: dict[str, str]) -> dict[str, Any]:
    noise = Noise()
    run = run_timed(mmcli_command(mmcli, [str(directory)], model), env, stamp_lines=True)
    records = [json.loads(line) for line in run["lines"] if line.strip()]
    stamps: list[float] = run["stamps"]
    steady, bursts = steady_rate(stamps)
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

    cold_cmd = [
        mmcli,
        "classify",
        str(one),
        "--labels",
        ",".join(LABELS),
        "--model",
        str(model),
        "--no-cache",
    ]
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


def score_agreement(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, Any]:
    common = [k for k in a if k in b]
    if not common:
        return {"images": 0}
    top_same = sum(max(a[k], key=a[k].__getitem__) == max(b[k], key=b[k].__getitem__) for k in common)
    diff = max(abs(a[k][label] - b[k][label]) for k in common for label in a[k])
    return {"images": len(common), "top1_same": top_same, "max_abs_score_diff": diff}
