"""mmcli eval: its numbers equal those computed from classify's records; ImageFolder, --truth CSV and the
--labels-file mapping; resume of --output; --compare-templates on embeddings computed once; usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmcli.testing import shapes

CLASSES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("purple", "star")]
PER_CLASS = 3
# The purple stars' folder is mapped to a wrong label ("orange star") while "purple star" stays a candidate
# (a distractor no folder has): shapes-clip, near-perfect on these shapes, confuses every one of them.
MAPPING = """\
# folder: label
red circle: red circle
blue square: blue square
green triangle: green triangle
purple star: orange star
purple star  # a distractor: no folder has this label
red square
blue circle
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA/<colour shape>/<i>.png, three small renders per class, and one file that is no image."""
    root = tmp_path_factory.mktemp("eval") / "data"
    for c, (colour, shape) in enumerate(CLASSES):
        folder = root / f"{colour} {shape}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            scene = shapes.scene(1000 + 10 * c + i, colour=colour, shape=shape, width=96, height=80)
            scene.render().save(folder / f"{i}.png")
    (root / "red circle" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "stray.png").write_bytes((root / "red circle" / "0.png").read_bytes())  # in no class folder
    return root


@pytest.fixture(scope="module")
def mapping(data: Path) -> Path:
    path = data.parent / "names.txt"
    path.write_text(MAPPING)
    return path


def folder_truth(data: Path) -> dict[str, str]:
    """Each image's truth by MAPPING, in eval's order (class folders sorted)."""
    pairs = [line.split(":") for line in MAPPING.splitlines() if ": " in line]
    names = {folder.strip(): label.strip() for folder, label in pairs}
    return {str(p): names[p.parent.name] for p in sorted(data.glob("*/*.png"))}


def expected_metrics(records: list[dict], truth: dict[str, str], labels: list[str]) -> dict:
    """top-1, top-5, per-class precision/recall/support and the confusion matrix, from classify's records."""
    good = [r for r in records if "error" not in r]
    top1 = sum(r["label"] == truth[r["input"]] for r in good) / len(good)
    top5 = sum(truth[r["input"]] in list(r["scores"])[:5] for r in good) / len(good)
    matrix = [[0] * len(labels) for _ in labels]
    for r in good:
        matrix[labels.index(truth[r["input"]])][labels.index(r["label"])] += 1
    per_class = {}
    for label in labels:
        hits = sum(1 for r in good if r["label"] == label == truth[r["input"]])
        support = sum(1 for r in good if truth[r["input"]] == label)
        predicted = sum(1 for r in good if r["label"] == label)
        per_class[label] = {
            "precision": hits / predicted if predicted else None,
            "recall": hits / support if support else None,
            "support": support,
        }
    return {"top1": top1, "top5": top5, "per_class": per_class, "matrix": matrix}


def test_eval_equals_metrics_from_classify_records(cli, data: Path, mapping: Path) -> None:
    result = cli("eval", data, "-m", "shapes-clip", "--labels-file", mapping, "-f", "json")
    assert result.code == 3, result.stderr  # the broken file: counted, listed, not scored
    report = json.loads(result.stdout)
    labels = report["labels"]
    assert labels == [
        "red circle", "blue square", "green triangle", "orange star", "purple star", "red square", "blue circle"
    ]  # fmt: skip
    truth = folder_truth(data)
    assert report["n"] == len(truth) == len(CLASSES) * PER_CLASS  # stray.png is in no class folder
    broken = str(data / "red circle" / "broken.jpg")
    assert report["failed"] == 1 and [f["input"] for f in report["failures"]] == [broken]

    run = cli("classify", *truth, broken, "-m", "shapes-clip", "--labels", ",".join(labels), "-f", "jsonl")
    records = run.jsonl()
    expected = expected_metrics(records, truth, labels)
    assert report["top1"] == pytest.approx(expected["top1"])
    assert report["top5"] == pytest.approx(expected["top5"])
    assert report["per_class"] == expected["per_class"]  # ratios of the same counts: exact
    assert report["confusion"] == {"labels": labels, "matrix": expected["matrix"]}
    # the wrong mapping makes the confusions: every purple star is "orange star" by truth
    assert report["confused"][0] == {"truth": "orange star", "predicted": "purple star", "count": PER_CLASS}
    assert report["per_class"]["orange star"]["recall"] == 0.0
    by_input = {r["input"]: r for r in records}
    wrong = [name for name in truth if by_input[name]["label"] != truth[name]]
    assert [m["input"] for m in report["misclassified"]] == wrong
    for miss in report["misclassified"]:
        top3 = list(by_input[miss["input"]]["scores"].items())[:3]
        assert miss["truth"] == truth[miss["input"]]
        assert [label for label, _ in miss["top3"]] == [label for label, _ in top3]
        assert [score for _, score in miss["top3"]] == pytest.approx([score for _, score in top3], abs=1e-6)


def test_the_table_on_a_terminal_names_the_numbers_and_the_confusions(cli, data: Path, mapping: Path) -> None:
    result = cli("eval", data, "-m", "shapes-clip", "--labels-file", mapping, "-f", "table", "-q")
    assert result.code == 3
    text = result.text
    assert "top-1" in text and "per class" in text and "most confused" in text
    assert "orange star" in text and "purple star" in text
    assert "broken.jpg" in text  # listed as failed
    assert result.stderr == ""


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_truth_csv_and_a_resumed_output_still_count_every_image(
    cli, data: Path, tmp_path: Path, suffix: str
) -> None:
    import csv

    rows = ["path,label"]
    truth = {}
    for i, image in enumerate(sorted(data.glob("*/*.png"))):
        label = image.parent.name if i != 0 else "green triangle"  # one wrong truth: a confusion
        rows.append(f'"{image.relative_to(data.parent)}",{label}')
        truth[str(image)] = label
    table = data.parent / "truth.csv"
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / f"records.{suffix}"
    args = ["eval", "--truth", table, "-m", "shapes-clip", "-o", out, "-f", "json"]

    first = cli(*args)
    assert first.code == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["labels"] == sorted(f"{colour} {shape}" for colour, shape in CLASSES)
    assert report["n"] == len(truth) and report["top1"] < 1.0
    lines = out.read_text().splitlines(keepends=True)
    if suffix == "csv":
        records = list(csv.DictReader(lines))
        assert list(records[0])[:3] == ["input", "truth", "label"]
    else:
        records = [json.loads(line) for line in lines]
    assert {r["input"]: r["truth"] for r in records} == truth  # relative paths resolved to the CSV's folder
    assert all(r["label"] and r["scores"] for r in records)

    head = 1 if suffix == "csv" else 0
    out.write_text("".join(lines[: head + 5] + lines[head + 8 :]))  # as if stopped: three records missing
    summary = tmp_path / "summary.json"
    again = cli(*args, "--summary-json", summary)
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout) == report  # the skipped images count, read back from the file
    counts = json.loads(summary.read_text())
    assert (counts["done"], counts["skipped"]) == (3, len(truth) - 3)
    assert len(out.read_text().splitlines()) == head + len(truth)


def test_compare_templates_ranks_on_image_embeddings_computed_once(cli, data: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates.txt"
    templates.write_text("# prompts to try\na photo of a {}.\nred star {}\nensemble:imagenet7\n")
    cache = tmp_path / "cache"
    args = ["eval", data, "-m", "shapes-clip", "--cache-dir", cache, "-f", "json"]
    result = cli(*args, "--compare-templates", templates)
    assert result.code == 3, result.stderr  # the broken file
    ranked = json.loads(result.stdout)
    n = len(CLASSES) * PER_CLASS
    assert [row["rank"] for row in ranked] == [1, 2, 3]
    assert [row["top1"] for row in ranked] == sorted((row["top1"] for row in ranked), reverse=True)
    by_name = {row["template"] or "ensemble:" + row["ensemble"]: row for row in ranked}
    assert set(by_name) == {"a photo of a {}.", "red star {}", "ensemble:imagenet7"}
    assert ranked[-1]["template"] == "red star {}"  # a misleading prompt loses
    assert by_name["red star {}"]["top1"] < by_name["a photo of a {}."]["top1"]
    # the first template encodes the images; the others find every embedding in the cache
    assert by_name["a photo of a {}."]["cache_hits"] == 0
    assert by_name["a photo of a {}."]["cache_misses"] == n + 1  # the broken file is looked up, never stored
    for name in ("red star {}", "ensemble:imagenet7"):
        assert (by_name[name]["cache_hits"], by_name[name]["cache_misses"]) == (n, 0)
        assert (by_name[name]["n"], by_name[name]["failed"]) == (n, 1)
    single = json.loads(cli(*args, "--template", "red star {}").stdout)
    assert single["top1"] == by_name["red star {}"]["top1"]
    assert single["top5"] == by_name["red star {}"]["top5"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "no such directory"),
        (["{empty}"], "holds no images in class folders"),
        (["--truth", "{bad_csv}"], "needs the columns path,label"),
        (["{data}", "--truth", "{bad_csv}"], "not both"),
        ([], "nothing to evaluate"),
        (["{data}", "-m", "shapes-llava", "--compare-templates", "{templates}"], "generative"),
        (["{data}", "--labels-file", "{partial}"], "does not list 'purple star'"),
        (["{data}", "--labels-file", "{half_line}"], "both sides of the colon"),
        (["{data}", "-f", "csv"], "not available for eval"),
        (["{data}", "--compare-templates", "{templates}", "-o", "{out}"], "writes no --output"),
    ],
)
def test_usage_errors_are_one_line(cli, data: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "bad.csv").write_text("file,class\na.png,cat\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n")
    (tmp_path / "partial.txt").write_text("red circle\nblue square\ngreen triangle\n")
    (tmp_path / "half.txt").write_text("red circle:\n")
    places = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "bad_csv": tmp_path / "bad.csv",
        "data": data,
        "templates": tmp_path / "templates.txt",
        "partial": tmp_path / "partial.txt",
        "half_line": tmp_path / "half.txt",
        "out": tmp_path / "out.jsonl",
    }
    model = [] if "-m" in args else ["-m", "shapes-clip"]
    result = cli("eval", *[a.format(**places) for a in args], *model)
    assert result.code == 2, result.stderr
    assert result.stderr.startswith("mmcli: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert result.stdout == b""


def test_eval_through_mmcli_serve_gives_the_same_results(
    cli, data: Path, mapping: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import tempfile

    from tests.test_serve import start_server

    base = Path(tempfile.mkdtemp(prefix="mmcli-eval-"))  # a short socket path, as test_serve's
    server = start_server(base / "run", "--keep-alive", "3s", "--preload", "shapes-clip")
    try:
        monkeypatch.setenv("MMCLI_SOCKET", str(server.sock))
        args = ["eval", data, "-m", "shapes-clip", "--labels-file", mapping, "-f", "json", "--no-cache"]
        served = cli(*args, "-o", tmp_path / "served.jsonl")
        local = cli(*args, "-o", tmp_path / "local.jsonl", "--no-server")
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert served.code == local.code == 3, served.stderr + local.stderr
    assert "via server (pid" in served.stderr and "via server" not in local.stderr
    assert json.loads(served.stdout) == json.loads(local.stdout)
    assert (tmp_path / "served.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()
