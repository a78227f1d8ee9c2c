"""embed and compare: parity with the model's own features, npy output, ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def _features(model_dir, paths=(), texts=()):
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    proc = CLIPProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        out = {}
        if paths:
            pixels = proc.image_processor(
                images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt"
            )
            feats = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
            out["images"] = torch.nn.functional.normalize(feats, dim=-1)
        if texts:
            tok = proc.tokenizer(list(texts), padding=True, return_tensors="pt")
            feats = model.get_text_features(**tok).pooler_output
            out["texts"] = torch.nn.functional.normalize(feats, dim=-1)
    return out


def test_embeddings_equal_normalised_model_features(cli, tiny_clip, image_dir):
    paths = [str(image_dir / "a.jpg"), str(image_dir / "b.png")]
    texts = ["a red circle", "a dog"]
    result = cli("embed", *paths, "--text", texts[0], "--text", texts[1], "--model", tiny_clip)
    assert result.code == 0, result.stderr
    records = result.jsonl()
    assert [r.get("text") for r in records[:2]] == texts
    assert [r.get("input") for r in records[2:]] == paths
    expected = _features(tiny_clip, paths, texts)
    got_text = torch.tensor([r["embedding"] for r in records[:2]])
    got_images = torch.tensor([r["embedding"] for r in records[2:]])
    assert torch.allclose(got_text, expected["texts"], atol=1e-5)
    assert torch.allclose(got_images, expected["images"], atol=1e-5)
    assert torch.allclose(got_images.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert all(r["model"] == str(tiny_clip) for r in records)


def test_embed_texts_alone_summarise_their_records(cli, tiny_clip):
    result = cli("embed", "--text", "a red circle", "--text", "a dog", "--model", tiny_clip)
    assert result.code == 0, result.stderr
    assert len(result.jsonl()) == 2
    assert "embed: 2 records;" in result.stderr and "0 done" not in result.stderr


def test_embed_to_npy_with_ids_file(cli, tiny_clip, image_dir, tmp_path):
    out = tmp_path / "vectors.npy"
    (tmp_path / "bad.jpg").write_text("x")
    result = cli("embed", image_dir, tmp_path / "bad.jpg", "--model", tiny_clip, "--output", out)
    assert result.code == 3  # the bad file
    matrix = np.load(out)
    ids = [json.loads(line) for line in (tmp_path / "vectors.ids.jsonl").read_text().splitlines()]
    assert matrix.shape == (5, 16) and matrix.dtype == np.float32
    assert [i["input"] for i in ids] == sorted(i["input"] for i in ids)
    assert all("embedding" not in i for i in ids)
    expected = _features(tiny_clip, [i["input"] for i in ids])["images"].numpy()
    assert np.allclose(matrix, expected, atol=1e-5)
    assert "bad.jpg" in result.stderr


def test_embed_needs_something_to_embed(cli, tiny_clip):
    assert cli("embed", "--model", tiny_clip).code == 2


def test_embed_csv_and_table(cli, tiny_clip, image_dir):
    csv_out = cli("embed", image_dir / "a.jpg", "--model", tiny_clip, "-f", "csv").text.splitlines()
    assert csv_out[0] == "input,text,embedding,model,error"
    assert len(json.loads(csv_out[1].split(",", 2)[2].rsplit(",", 2)[0].strip('"'))) == 16
    table = cli("embed", image_dir / "a.jpg", "--model", tiny_clip, "-f", "table").text
    assert "a.jpg" in table and "16" in table


def test_compare_text_ranks_images_by_cosine(cli, tiny_clip, image_dir):
    result = cli("compare", image_dir, "--text", "a red circle", "--text", "a dog", "--model", tiny_clip)
    assert result.code == 0, result.stderr
    records = result.jsonl()
    assert len(records) == 10
    paths = sorted({r["target"] for r in records})
    feats = _features(tiny_clip, paths, ["a red circle", "a dog"])
    sims = feats["texts"] @ feats["images"].T
    for q, query in enumerate(["a red circle", "a dog"]):
        mine = [r for r in records if r["query"] == query]
        scores = [r["score"] for r in mine]
        assert scores == sorted(scores, reverse=True)
        for r in mine:
            assert r["score"] == pytest.approx(float(sims[q, paths.index(r["target"])]), abs=1e-5)


def test_compare_against_finds_look_alikes_with_top_k(cli, tiny_clip, image_dir):
    query = image_dir / "a.jpg"
    result = cli("compare", query, "--against", image_dir, "--top-k", "2", "--model", tiny_clip)
    records = result.jsonl()
    assert len(records) == 2
    assert records[0]["query"] == str(query) and records[0]["target"] == str(query)
    assert records[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert records[1]["score"] <= records[0]["score"]


def test_compare_needs_exactly_one_of_text_or_against(cli, tiny_clip, image_dir):
    assert cli("compare", image_dir, "--model", tiny_clip).code == 2
    both = cli("compare", image_dir, "--text", "x", "--against", image_dir, "--model", tiny_clip)
    assert both.code == 2
