"""The shared run: batching, out-of-memory back-off, order of records."""

from __future__ import annotations

import pytest
import torch


def test_out_of_memory_halves_the_batch_and_gives_the_same_records(cli, tiny_clip, image_dir, monkeypatch):
    from mmcli.modeling.backends.clip import ClipBackend

    args = [
        "classify",
        image_dir,
        "--labels",
        "cat,dog",
        "--model",
        tiny_clip,
        "--batch-size",
        "5",
        "--no-cache",
    ]
    expected = cli(*args).jsonl()
    sizes: list[int] = []
    original = ClipBackend.encode_images

    def small_memory(self, batch):
        n = batch["pixel_values"].shape[0]
        sizes.append(n)
        if n > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, batch)

    monkeypatch.setattr(ClipBackend, "encode_images", small_memory)
    result = cli(*args)
    assert result.code == 0, result.stderr
    got = result.jsonl()
    assert [r["input"] for r in got] == [r["input"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["scores"] == {k: pytest.approx(v, abs=1e-6) for k, v in b["scores"].items()}
    assert "out of memory with a batch of 5: retrying in batches of 2" in result.stderr
    assert sizes == [5, 2, 2, 1]  # then the smaller size is remembered: no second failure


def test_out_of_memory_with_one_image_is_fatal_with_advice(cli, tiny_clip, image_dir, monkeypatch):
    from mmcli.modeling.backends.clip import ClipBackend

    def no_memory(self, batch):
        raise RuntimeError("MPS backend out of memory")

    monkeypatch.setattr(ClipBackend, "encode_images", no_memory)
    result = cli("classify", image_dir / "a.jpg", "--labels", "a,b", "--model", tiny_clip)
    assert result.code == 1
    assert "out of memory" in result.stderr and "--dtype fp16" in result.stderr


def test_other_backend_errors_are_not_mistaken_for_out_of_memory(cli, tiny_clip, image_dir, monkeypatch):
    from mmcli.modeling.backends.clip import ClipBackend

    def broken(self, batch):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(ClipBackend, "encode_images", broken)
    result = cli("classify", image_dir / "a.jpg", "--labels", "a,b", "--model", tiny_clip)
    assert result.code == 1 and "shape mismatch" in result.stderr
