"""--report FILE.html: the page, rendered in headless Chromium (Debian's ``chromium``; .ci/run installs it),
checked by its screenshot and by the DOM after its script ran; and the file rules (never over a file mmcli
did not write, written in one step), without a browser."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmcli.errors import MmcliError, UsageError
from mmcli.sinks.report import MARKER, ReportWriter, is_report, thumbnail_jpeg
from mmcli.sinks.report.thumbs import NOT_FETCHED, THUMB_SIZE

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
PLUGINS = str(Path(__file__).parent / "plugins")
INK = (8, 48, 107)  # report.js: the confusion matrix's colour at 100 % of a row
WINDOW = (1200, 900)


# -- the browser ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "headless Chromium is needed to test --report: install it with `apt-get install chromium` "
        "(Debian/Ubuntu), `brew install --cask chromium` (macOS), or put chromium on PATH"
    )


class Node:
    def __init__(self, tag: str, attrs: dict[str, str]):
        self.tag = tag
        self.attrs = attrs
        self.classes = set(attrs.get("class", "").split())
        self.text = ""


class Dom(HTMLParser):
    """The rendered DOM (chromium --dump-dom) as a flat list of elements with their text."""

    VOID = frozenset(
        ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"]
    )

    def __init__(self, markup: str):
        super().__init__()
        self.nodes: list[Node] = []
        self._open: list[Node] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.nodes.append(node)
        if tag not in self.VOID:
            self._open.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1].tag == "script":
            return
        for node in self._open:
            node.text += data

    def find(self, cls: str = "", tag: str = "") -> list[Node]:
        return [n for n in self.nodes if (not cls or cls in n.classes) and (not tag or n.tag == tag)]

    def one(self, cls: str = "", tag: str = "", **attrs: str) -> Node:
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}  # data_key="top1": data-key="top1"
        found = [n for n in self.find(cls, tag) if all(n.attrs.get(k) == v for k, v in wanted.items())]
        assert len(found) == 1, f"{len(found)} elements .{cls} {tag} {attrs}"
        return found[0]


def render(browser: str, page: Path, tmp_path: Path, fragment: str = "") -> tuple[Dom, Image.Image]:
    """One Chromium run: the DOM after the page's script ran, and a screenshot of the window."""
    shot = tmp_path / f"shot-{len(list(tmp_path.glob('shot-*')))}.png"
    proc = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={shot}",
            "--dump-dom",
            page.as_uri() + fragment,
        ],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr.decode("utf-8", "replace")[-2000:]
    return Dom(proc.stdout.decode("utf-8")), Image.open(shot).convert("RGB")


def colours(image: Image.Image) -> int:
    pixels = np.asarray(image.resize((300, 225))).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 3) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def shade(v: float) -> tuple[int, int, int]:
    r, g, b = (round(255 + (c - 255) * v) for c in INK)
    return r, g, b


# -- the page as data, without a browser ---------------------------------------------------------------------
def blobs(page: Path) -> tuple[dict[str, Any], list[Any]]:
    text = page.read_text("utf-8")
    data = re.search(r'<script type="application/json" id="mmcli-data">(.*?)</script>', text, re.S)
    thumbs = re.search(r'<script type="application/json" id="mmcli-thumbs">(.*?)</script>', text, re.S)
    assert data and thumbs
    return json.loads(data.group(1)), json.loads(thumbs.group(1))


def thumbnail(thumbs: list[Any], index: int) -> Image.Image:
    value = thumbs[index]
    assert isinstance(value, str), value
    return Image.open(io.BytesIO(base64.b64decode(value)))


# -- classify ---------------------------------------------------------------------------------------------
@pytest.fixture
def classified() -> list[dict[str, Any]]:
    """The records of a real ``mmcli classify -f jsonl`` run over the samples, as the command hands them to
    its report (function-scoped: the run gets this test's own cache and no server)."""
    from tests.conftest import run_mmcli

    labels = SAMPLES / "shapes-labels.txt"
    result = run_mmcli("classify", SAMPLES, "--model", "shapes-clip", "--labels-file", labels, "-f", "jsonl")
    assert result.code == 0, result.stderr
    records = result.jsonl()
    assert len(records) == 9
    return records


def test_classify_gallery_pages_in_chromium(
    browser: str, classified: list[dict[str, Any]], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    missing = [
        {"input": str(tmp_path / f"gone-{i:03}.png"), "label": "red star", "score": i / 1000, "scores": {}}
        for i in range(241)
    ]
    records = [*classified, *missing, {"input": "broken.jpg", "error": "not an image"}]
    with ReportWriter(str(page), "classify", title="shapes") as report:
        for record in records:
            report.add(record)
    good = [r for r in records if "error" not in r]  # 250: three pages of 100

    dom, shot = render(browser, page, tmp_path)
    cards = dom.find("card", "figure")
    assert len(cards) == 100
    assert [n.text for n in dom.find("label")] == [r["label"] for r in good[:100]]
    assert [n.attrs["title"] for n in dom.find("name")] == [r["input"] for r in good[:100]]
    assert dom.find("where")[0].text == "page 1 of 3 · 1–100 of 250"
    # the real thumbnails are shown, the gone files are placeholders that say why
    assert len(dom.find(tag="img")) == len(classified)
    placeholders = dom.find("placeholder")
    assert len(placeholders) == 100 - len(classified)
    assert "no such file" in placeholders[0].text.lower()
    # the errors are listed with their reason
    assert [n.text for n in dom.find("reason")] == ["not an image"]
    # the screenshot: a real page with the samples' colours (the red circle's red among them)
    assert colours(shot) > 200
    rgb = np.asarray(shot).astype(int)
    reds = int(((rgb[..., 0] > 180) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())
    assert reds > 500

    dom, _ = render(browser, page, tmp_path, "#page=3")
    assert dom.find("where")[0].text == "page 3 of 3 · 201–250 of 250"
    assert [n.attrs["title"] for n in dom.find("name")] == [r["input"] for r in good[200:]]

    dom, _ = render(browser, page, tmp_path, "#q=samples&sort=low")
    shown = [n.attrs["title"] for n in dom.find("name")]
    wanted = sorted(classified, key=lambda r: r["score"])
    assert shown == [r["input"] for r in wanted]


def test_a_thumbnail_is_a_small_jpeg_and_a_failure_a_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MMCLI_PILLOW_PLUGINS", "pillow_evil")  # decoder processes import a crashing format
    big = tmp_path / "wide.png"
    Image.new("RGB", (1000, 500), (200, 30, 30)).save(big)
    crash = tmp_path / "crash.png"
    crash.write_bytes(b"EVILSEGV \0" + b"\0" * 64)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    page = tmp_path / "r.html"
    report = ReportWriter(str(page), "classify", threads=2)
    for name in (big, crash, fifo, "https://example.com/cat.jpg", big):
        report.add({"input": str(name), "label": "x", "score": 1.0, "scores": {"x": 1.0}})
    report.close()

    data, thumbs = blobs(page)
    assert [item["t"] for item in data["items"]] == [0, 1, 2, 3, 0]  # one thumbnail per distinct image
    small = thumbnail(thumbs, 0)
    assert small.format == "JPEG" and small.size == (THUMB_SIZE, THUMB_SIZE // 2)
    assert thumbs[1] == {"error": "the decoder crashed: SIGSEGV"}
    assert thumbs[2] == {"error": "not a regular file"}
    assert thumbs[3] == {"error": NOT_FETCHED}


def test_thumbnails_keep_the_runs_pixel_limit_and_their_own_count_limit(tmp_path: Path) -> None:
    big, small, third = tmp_path / "big.png", tmp_path / "small.png", tmp_path / "third.png"
    Image.new("RGB", (1000, 500)).save(big)
    Image.new("RGB", (50, 40), (0, 200, 0)).save(small)
    Image.new("RGB", (50, 40)).save(third)
    page = tmp_path / "r.html"
    with ReportWriter(str(page), "caption", max_pixels=10_000, max_thumbnails=2) as report:
        for name in (big, small, third):
            report.add({"input": str(name), "caption": "c"})
    data, thumbs = blobs(page)
    assert "pixels" in thumbs[0]["error"]
    assert thumbnail(thumbs, 1).size == (50, 40)  # never enlarged
    assert thumbs[2] == {"error": "over the report's limit of 2 thumbnails"}
    assert data["notices"] == ["Only the first 2 images have thumbnails (1 more shown without)."]


def test_a_thumbnail_the_run_made_is_used_and_nothing_is_decoded_again(tmp_path: Path) -> None:
    decoded = Image.new("RGB", (400, 300), (10, 20, 200))
    report = ReportWriter(str(tmp_path / "r.html"), "caption")
    report.add({"input": "https://example.com/a.jpg", "caption": "c"}, thumbnail=thumbnail_jpeg(decoded))
    assert report.thumbs._pool is None  # no thread, no decoder process started
    report.close()
    assert decoded.size == (400, 300)  # the run's pixels are left as they were
    small = thumbnail(blobs(tmp_path / "r.html")[1], 0)
    assert small.size == (THUMB_SIZE, 144) and small.getpixel((5, 5))[2] > 180


def test_a_1000_label_record_keeps_its_best_five_scores(tmp_path: Path) -> None:
    scores = {f"label {i}": i / 1000 for i in range(1000)}
    report = ReportWriter(str(tmp_path / "r.html"), "classify")
    report.add({"input": "https://example.com/a.jpg", "label": "label 999", "score": 0.999, "scores": scores})
    report.close(complete=False)
    data, _ = blobs(tmp_path / "r.html")
    assert [p[0] for p in data["items"][0]["k"]] == [f"label {i}" for i in (999, 998, 997, 996, 995)]
    assert data["complete"] is False and "interrupted" in data["notices"][0]


# -- caption: everything from the inputs is text -------------------------------------------------------------
def test_markup_in_captions_file_names_and_titles_stays_text(browser: str, tmp_path: Path) -> None:
    folder = tmp_path / "<"
    folder.mkdir()
    odd = folder / "script>.png"  # its path holds "</script>"
    shutil.copy(SAMPLES / "shapes-red-circle.png", odd)
    attack = "</script><script>document.body.dataset.pwned = 1</script>"
    image_attack = '<img src=x onerror="document.body.dataset.pwned = 2">'
    url = "https://example.com/a.jpg?q=<script>"
    records = [
        {"input": str(odd), "caption": attack, "prompt": "Describe </script> it.", "model": "m"},
        {"input": str(SAMPLES / "shapes-yellow-star.png"), "caption": image_attack, "prompt": "Other"},
        {"input": url, "caption": "a & b < c", "prompt": "Other"},
        {"input": "javascript:document.body.dataset.pwned=3", "caption": "not a link", "prompt": "Other"},
        {"input": "</script>.jpg", "error": "<b>bold</b> </script>"},
    ]
    page = tmp_path / "captions.html"
    with ReportWriter(
        str(page), "caption", title="</title><script>document.body.dataset.pwned=4</script>"
    ) as r:
        for record in records:
            r.add(record)

    dom, shot = render(browser, page, tmp_path)
    body = dom.one(tag="body")
    assert "data-pwned" not in body.attrs and "pwned" not in body.attrs
    assert [n.text for n in dom.find("caption", "p")] == [attack, image_attack, "a & b < c", "not a link"]
    assert dom.find("name")[0].text == "script>.png"
    assert dom.find("name")[0].attrs["title"] == str(odd)
    assert dom.one(tag="h1").text == "</title><script>document.body.dataset.pwned=4</script>"
    links = dom.find(tag="a", cls="name")
    assert [a.attrs["href"] for a in links] == [url]
    assert dom.one("reason").text == "<b>bold</b> </script>"
    assert dom.one("prompts").text == "prompts: Describe </script> it. | Other"
    assert [n.text for n in dom.find("prompt")] == ["prompt: Describe </script> it.", *["prompt: Other"] * 3]
    assert len(dom.find(tag="img")) == 2  # the odd path was thumbnailed; the injected <img> is only text
    assert colours(shot) > 50


# -- eval -------------------------------------------------------------------------------------------------
def eval_results() -> dict[str, Any]:
    labels = ["circle", "square", "star"]
    matrix = [[8, 2, 0], [0, 10, 0], [1, 0, 9]]  # rows: truth
    per_class = {
        "circle": {"precision": 8 / 9, "recall": 0.8, "support": 10},
        "square": {"precision": 10 / 12, "recall": 1.0, "support": 10},
        "star": {"precision": 1.0, "recall": 0.9, "support": 10},
    }
    misclassified = [
        {"input": str(SAMPLES / "shapes-red-circle.png"), "truth": "circle",
         "top3": [["square", 0.6], ["circle", 0.3], ["star", 0.1]]},
        {"input": str(SAMPLES / "red-circle.png"), "truth": "circle",
         "top3": [["square", 0.5], ["circle", 0.4], ["star", 0.1]]},
        {"input": str(SAMPLES / "shapes-purple-star.jpg"), "truth": "star",
         "top3": [["circle", 0.7], ["star", 0.2], ["square", 0.1]]},
    ]  # fmt: skip
    return {
        "top1": 27 / 30,
        "top5": 1.0,
        "n": 30,
        "model": "shapes-clip",
        "template": "a {}",
        "per_class": per_class,
        "confusion": {"labels": labels, "matrix": matrix},
        "misclassified": misclassified,
    }


def test_eval_page_shows_the_numbers_the_matrix_and_the_mistakes(browser: str, tmp_path: Path) -> None:
    results = eval_results()
    page = tmp_path / "eval.html"
    with ReportWriter(str(page), "eval", title="eval") as report:
        report.add({"input": "x.png", "error": "empty file"})
        report.set_eval(results)

    dom, shot = render(browser, page, tmp_path)
    for key in ("top1", "top5", "n"):
        assert float(dom.one("metric", data_key=key).attrs["data-value"]) == results[key]
    assert dom.one("metric", data_key="top1").text == "90.0 %"
    assert dom.one("metric", data_key="template").text == "a {}"
    # per-class bars, worst first, each as wide as its recall
    bars = dom.find("bar-row")
    assert [b.attrs["data-label"] for b in bars] == ["circle", "star", "square"]
    for bar in bars:
        assert float(bar.attrs["data-recall"]) == results["per_class"][bar.attrs["data-label"]]["recall"]
    widths = [n.attrs["style"] for n in dom.find("fill")]
    assert widths == ["width: 80%;", "width: 90%;", "width: 100%;"]
    assert [n.text for n in dom.find("pair")] == ["circle → square: 2", "star → circle: 1"]
    # the matrix as a picture: each cell shaded by its share of the row
    matrix = dom.one(tag="canvas")
    x0, y0, cell = (int(matrix.attrs[k]) for k in ("data-x0", "data-y0", "data-cell"))
    assert y0 + 3 * cell < WINDOW[1], "the matrix is below the screenshot"

    def at(row: int, col: int) -> tuple[int, ...]:
        return shot.getpixel((x0 + col * cell + 3, y0 + row * cell + 3))

    assert close_to(at(1, 1), INK)
    assert close_to(at(0, 0), shade(0.8))
    assert close_to(at(0, 1), shade(0.2))
    assert close_to(at(2, 0), shade(0.1))
    assert close_to(at(0, 2), (255, 255, 255))
    # the misclassified images with their truth and top-3
    cards = dom.find("card")
    assert [c.attrs["data-index"] for c in cards] == ["0", "1", "2"]
    assert [n.text for n in dom.find("truth")] == ["truth: circle", "truth: circle", "truth: star"]
    assert [n.text for n in dom.find("l")][:3] == ["square", "circle", "star"]
    assert len(dom.find(tag="img")) == 3
    assert dom.one("reason").text == "empty file"
    assert colours(shot) > 100


# -- the file: never over someone else's, always whole ------------------------------------------------------
def test_a_file_mmcli_did_not_write_is_refused_before_the_run(tmp_path: Path) -> None:
    mine = tmp_path / "notes.html"
    mine.write_text("my notes")
    with pytest.raises(UsageError, match=r"--report .*notes\.html: .*notes\.html exists and is not a report"):
        ReportWriter(str(mine), "classify")
    assert mine.read_text() == "my notes"
    (tmp_path / "link.html").symlink_to(mine)
    with pytest.raises(UsageError, match="not a report mmcli wrote"):
        ReportWriter(str(tmp_path / "link.html"), "caption")
    with pytest.raises(UsageError, match="is a directory"):
        ReportWriter(str(tmp_path), "classify")
    with pytest.raises(UsageError, match="does not exist"):
        ReportWriter(str(tmp_path / "no" / "r.html"), "classify")
    with pytest.raises(UsageError, match="needs a file name"):
        ReportWriter("-", "classify")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.html", "notes.html"]  # no temporary left


def test_overwrite_replaces_and_a_report_of_mmcli_is_replaced_anyway(tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    page.write_text("someone's page")
    ReportWriter(str(page), "classify", overwrite=True).close()
    assert is_report(str(page)) and MARKER in page.read_text()
    before = page.stat().st_ino
    ReportWriter(str(page), "caption").close()  # a report mmcli wrote: replaced without --overwrite
    assert blobs(page)[0]["kind"] == "caption"
    assert page.stat().st_ino != before  # moved into place in one step, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_a_file_that_appears_during_the_run_is_left_alone(tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    report = ReportWriter(str(page), "classify")
    page.write_text("written meanwhile")
    with pytest.raises(MmcliError, match=r"appeared during the run and is not mmcli's: left as is"):
        report.close()
    assert page.read_text() == "written meanwhile"
    kept = [p for p in tmp_path.iterdir() if p.name != "r.html"]
    assert len(kept) == 1 and is_report(str(kept[0]))


def test_abort_writes_nothing(tmp_path: Path) -> None:
    report = ReportWriter(str(tmp_path / "r.html"), "classify")
    report.add({"input": str(SAMPLES / "shapes-red-circle.png"), "label": "x", "score": 1.0, "scores": {}})
    with pytest.raises(RuntimeError), report:
        raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == []


def test_importing_the_report_loads_neither_pillow_nor_torch() -> None:
    code = (
        "import sys, mmcli.sinks.report; print(sorted({'PIL', 'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_kind_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of classify, caption, eval"):
        ReportWriter(str(tmp_path / "r.html"), "vqa")


# -- --report on the commands ----------------------------------------------------------------------------------
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_classify_report_from_the_run_holds_every_record_and_thumbnail(
    cli, browser: str, tmp_path: Path
) -> None:
    page, out = tmp_path / "page.html", tmp_path / "out.jsonl"
    args = [
        "classify",
        str(SAMPLES),
        "--model",
        "shapes-clip",
        "--labels-file",
        str(SAMPLES / "shapes-labels.txt"),
    ]
    result = cli(*args, "--report", str(page), "-o", str(out), "-q")
    assert result.code == 0, result.stderr
    data, thumbs = blobs(page)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    shown = json.dumps(data)
    assert len(records) == 9 and all(r["input"] in shown and r["label"] in shown for r in records)
    assert sum(isinstance(t, str) for t in thumbs) == 9  # the run's own pixels, one thumbnail each
    dom, shot = render(browser, page, tmp_path)
    assert any("shapes-red-circle.png" in node.text for node in dom.nodes) and colours(shot) > 50
    again = cli(
        *args, "--report", str(out)
    )  # never over the --output file, nor over a file mmcli did not write
    assert again.code == 2 and "also the --output file" not in again.stderr and "not a report" in again.stderr


def test_report_and_output_are_different_files(cli, tmp_path: Path) -> None:
    same = tmp_path / "same.html"
    result = cli("caption", str(SAMPLES), "--model", "shapes-llava", "--report", str(same), "-o", str(same))
    assert result.code == 2 and "also the --output file" in result.stderr
    assert not same.exists()


def test_caption_report_through_the_cli(cli, tmp_path: Path) -> None:
    page = tmp_path / "captions.html"
    result = cli(
        "caption", str(SAMPLES / "shapes-red-circle.png"), "--model", "shapes-llava", "--report", str(page)
    )
    assert result.code == 0, result.stderr
    data, _ = blobs(page)
    assert "red" in json.dumps(data) and "shapes-red-circle.png" in json.dumps(data)


def test_eval_report_holds_the_metrics(cli, tmp_path: Path) -> None:
    for folder, image in (("red circle", "shapes-red-circle.png"), ("blue square", "shapes-blue-square.jpg")):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / image).write_bytes((SAMPLES / image).read_bytes())
    page = tmp_path / "eval.html"
    result = cli(
        "eval", str(tmp_path / "data"), "--model", "shapes-clip", "--report", str(page), "-f", "json"
    )
    assert result.code == 0, result.stderr
    numbers = json.loads(result.stdout)
    data, _ = blobs(page)
    assert data["eval"]["top1"] == numbers["top1"] == 1.0 and data["eval"]["n"] == numbers["n"] == 2
    assert data["eval"]["confusion"] == numbers["confusion"]
