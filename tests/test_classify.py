"""classify: parity with transformers, templates, ensembles, top-k, multi-label, SigLIP scoring."""

from __future__ import annotations

import pytest
import torch

LABELS = ["cat", "dog", "bird", "red car"]


def files(image_dir):
    return sorted(
        str(p)
        for p in image_dir.rglob("*")
        if p.suffix in {".jpg", ".png", ".webp", ".bmp"} and not p.name.startswith(".")
    )


def test_scores_match_transformers_pipeline(cli, tiny_clip, image_dir):
    from transformers import pipeline

    paths = files(image_dir)
    result = cli(
        "classify",
        *paths,
        "--labels",
        ",".join(LABELS),
        "--model",
        tiny_clip,
        "--template",
        "a photo of a {}.",
    )
    assert result.code == 0, result.stderr
    records = result.jsonl()
    assert [r["input"] for r in records] == paths
    pipe = pipeline("zero-shot-image-classification", model=str(tiny_clip))
    for record, path in zip(records, paths, strict=True):
        expected = pipe(path, candidate_labels=LABELS, hypothesis_template="a photo of a {}.")
        assert list(record["scores"]) == [e["label"] for e in expected]  # same order
        for e in expected:
            assert record["scores"][e["label"]] == pytest.approx(e["score"], abs=1e-5)
        assert record["label"] == expected[0]["label"]
        assert record["score"] == pytest.approx(expected[0]["score"], abs=1e-5)
        assert record["model"] == str(tiny_clip)


def test_siglip_scores_each_label_with_sigmoid(cli, tiny_siglip, image_dir):
    from transformers import pipeline

    path = files(image_dir)[0]
    labels = ["cat", "dog", "bird"]
    result = cli(
        "classify",
        path,
        "--labels",
        ",".join(labels),
        "--model",
        tiny_siglip,
        "--template",
        "a photo of a {} .",
    )
    assert result.code == 0, result.stderr
    (record,) = result.jsonl()
    pipe = pipeline("zero-shot-image-classification", model=str(tiny_siglip))
    expected = pipe(path, candidate_labels=labels, hypothesis_template="a photo of a {} .")
    for e in expected:
        assert record["scores"][e["label"]] == pytest.approx(e["score"], abs=1e-5)
    assert sum(record["scores"].values()) != pytest.approx(1.0, abs=1e-3)  # independent, not softmax


def _direct_probs(model_dir, path, labels, templates):
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    proc = CLIPProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        pixels = proc.image_processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")
        img = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
        img = torch.nn.functional.normalize(img, dim=-1)
        per_label = []
        for label in labels:
            tok = proc.tokenizer([t.format(label) for t in templates], padding=True, return_tensors="pt")
            txt = torch.nn.functional.normalize(model.get_text_features(**tok).pooler_output, dim=-1)
            per_label.append(torch.nn.functional.normalize(txt.mean(0), dim=-1))
        text = torch.stack(per_label)
        return torch.softmax(model.logit_scale.exp() * img @ text.T, dim=-1)[0]


def test_ensemble_averages_normalised_template_embeddings(cli, tiny_clip, image_dir):
    from mmcli.modeling.tasks import ensemble_templates

    path = files(image_dir)[0]
    templates = ensemble_templates("imagenet80")
    assert len(templates) == 80 and all("{}" in t for t in templates)
    result = cli("classify", path, "--labels", "cat,dog", "--model", tiny_clip, "--ensemble", "imagenet80")
    assert result.code == 0, result.stderr
    (record,) = result.jsonl()
    expected = _direct_probs(tiny_clip, path, ["cat", "dog"], templates)
    assert record["scores"]["cat"] == pytest.approx(float(expected[0]), abs=1e-5)
    assert record["scores"]["dog"] == pytest.approx(float(expected[1]), abs=1e-5)


def test_default_template_comes_from_the_model_entry(cli, tiny_clip, image_dir):
    path = files(image_dir)[0]
    result = cli("classify", path, "--labels", "cat,dog", "--model", tiny_clip)
    (record,) = result.jsonl()
    expected = _direct_probs(tiny_clip, path, ["cat", "dog"], ["a photo of a {}."])
    assert record["scores"]["cat"] == pytest.approx(float(expected[0]), abs=1e-5)


def test_top_k_keeps_the_best_in_descending_order(cli, tiny_clip, image_dir):
    path = files(image_dir)[0]
    full = cli("classify", path, "--labels", ",".join(LABELS), "--model", tiny_clip).jsonl()[0]
    top = cli("classify", path, "--labels", ",".join(LABELS), "--model", tiny_clip, "--top-k", "2").jsonl()[0]
    assert list(top["scores"]) == list(full["scores"])[:2]
    values = list(full["scores"].values())
    assert values == sorted(values, reverse=True)


def test_multi_label_returns_every_label_over_the_threshold(cli, tiny_siglip, image_dir):
    path = files(image_dir)[0]
    record = cli("classify", path, "--labels", "cat,dog,bird", "--model", tiny_siglip).jsonl()[0]
    threshold = sorted(record["scores"].values())[1] - 1e-6  # two labels above it
    multi = cli(
        "classify",
        path,
        "--labels",
        "cat,dog,bird",
        "--model",
        tiny_siglip,
        "--multi-label",
        "--threshold",
        str(threshold),
    ).jsonl()[0]
    assert multi["labels"] == [k for k, v in record["scores"].items() if v >= threshold]
    assert len(multi["labels"]) == 2


def test_labels_file_and_repeated_labels(cli, tiny_clip, image_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("# animals\ncat\n\ndog\n")
    record = cli(
        "classify",
        files(image_dir)[0],
        "--labels-file",
        labels,
        "--labels",
        "bird,fish",
        "--model",
        tiny_clip,
    ).jsonl()[0]
    assert set(record["scores"]) == {"cat", "dog", "bird", "fish"}
    again = cli(
        "classify", files(image_dir)[0], "--labels-file", labels, "--labels", "bird,cat", "-m", tiny_clip
    )
    assert again.code == 2 and "the label 'cat' is given twice" in again.stderr


def test_label_embeddings_are_computed_once_per_run(cli, tiny_clip, image_dir, monkeypatch):
    from mmcli.modeling.backends.clip import ClipBackend

    calls = []
    original = ClipBackend.encode_texts

    def counting(self, texts):
        calls.append(list(texts))
        return original(self, texts)

    monkeypatch.setattr(ClipBackend, "encode_texts", counting)
    result = cli("classify", image_dir, "--labels", "cat,dog", "--model", tiny_clip, "--batch-size", "2")
    assert result.code == 0 and len(result.jsonl()) == 5
    assert calls == [["a photo of a cat.", "a photo of a dog."]]


def test_bf16_on_cpu_is_close_to_fp32(cli, tiny_clip, image_dir):
    path = files(image_dir)[0]
    fp32 = cli("embed", path, "--model", tiny_clip, "--dtype", "fp32").jsonl()[0]["embedding"]
    bf16 = cli("embed", path, "--model", tiny_clip, "--dtype", "bf16")
    assert bf16.code == 0 and "bf16" in bf16.stderr
    cos = torch.nn.functional.cosine_similarity(
        torch.tensor(fp32), torch.tensor(bf16.jsonl()[0]["embedding"]), dim=0
    )
    assert cos > 0.99


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", ","], "no labels"),
        (["--labels", "a", "--template", "no placeholder"], "{}"),
        (["--labels", "a", "--ensemble", "nope"], "imagenet80"),
        (["--labels", "a", "--ensemble", "imagenet80", "--template", "a {}"], "together"),
    ],
)
def test_bad_label_options_are_usage_errors(cli, tiny_clip, image_dir, args, message):
    result = cli("classify", files(image_dir)[0], "--model", tiny_clip, *args)
    assert result.code == 2
    assert message in result.stderr
    assert result.stdout == b""
