"""Train models/shapes-llava: a LlavaForConditionalGeneration whose vision tower is shapes-clip's.

    .venv/bin/python train/train_llava.py             # the recorded run (needs models/shapes-clip)
    .venv/bin/python train/train_llava.py --smoke     # seconds: tiny pool, a few steps

Model: the CLIP vision tower of models/shapes-clip, copied and frozen (64 px, patch 8, width 128, 4 layers);
``vision_feature_layer=-1`` (its last layer: -2 would drop a quarter of a 4-layer tower) and
``vision_feature_select_strategy="full"`` (the class token is kept, so the language model sees the
tower's summary as well as its 64 patches: 65 image tokens, and ``image_seq_length`` = 65, the number the
processor expands ``<image>`` to); a two-layer GELU projector 128 -> 128; a Llama language model (width
128, 2 layers, 4 heads, MLP 256, untied head) with a hand-made Llama BPE tokenizer in which every word
of the world's prompts is one token (train/common.py). The processor squashes to 64×64 like shapes-clip's
and carries LLaVA-1.5's chat template (mmcli.testing.generative.LLAVA_CHAT_TEMPLATE).

Training: only the projector and the language model. The frozen tower's outputs for a pool of 20 k
augmented renderings (seeds 100 000 000 on) are computed once; each step takes 64 (image, task) pairs —
caption "Describe this image in one sentence." -> "a red circle", "What color is the shape?" (or a
paraphrase) -> "red", "What shape is it?" (or a paraphrase) -> "circle", "What is in this image?" ->
"red circle" — with the prompt rendered by the processor's chat template exactly as mmcli renders it, and
the loss on the answer tokens and EOS. AdamW lr 2e-3, betas (0.9, 0.98), wd 0.01, 4 % warm-up then cosine,
fp32 (bf16 autocast measured slower for this tiny model), 1 thread. Checked at the end through mmcli's
own backend on 300 held-out images.

Deterministic: seeded torch / random; same command, same weights.
"""

from __future__ import annotations

import time

import common as C
import gen_common as G
import torch

POOL_SEED0 = 100_000_000


def build(clip_dir: str) -> tuple[torch.nn.Module, object]:
    from transformers import (
        CLIPImageProcessor,
        CLIPModel,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from mmcli.testing.generative import LLAVA_CHAT_TEMPLATE

    clip = CLIPModel.from_pretrained(clip_dir)
    tok = C.llama_tokenizer()
    vision = clip.config.vision_config.to_dict()
    vision["model_type"] = "clip_vision_model"
    image_tokens = (C.IMAGE_SIZE // vision["patch_size"]) ** 2 + 1
    config = LlavaConfig(
        vision_config=vision,
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),  # type: ignore[arg-type]
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
            "bos_token_id": tok.bos_token_id,  # type: ignore[attr-defined]
            "eos_token_id": tok.eos_token_id,  # type: ignore[attr-defined]
            "pad_token_id": tok.pad_token_id,  # type: ignore[attr-defined]
        },
        image_token_index=tok.convert_tokens_to_ids("<image>"),  # type: ignore[attr-defined]
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        image_seq_length=image_tokens,
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config)
    tower = model.model.vision_tower
    prefix = "vision_model." if hasattr(tower, "vision_model") else ""
    state = {prefix + k: v for k, v in clip.vision_model.state_dict().items()}
    missing, unexpected = tower.load_state_dict(state, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    model.generation_config.eos_token_id = tok.eos_token_id  # type: ignore[attr-defined]
    model.generation_config.pad_token_id = tok.pad_token_id  # type: ignore[attr-defined]
    model.generation_config.bos_token_id = tok.bos_token_id  # type: ignore[attr-defined]
    images = CLIPImageProcessor(size={"height": C.IMAGE_SIZE, "width": C.IMAGE_SIZE}, do_center_crop=False)
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


def main() -> None:
    parser = G.parser(__doc__.split("\n")[0], "shapes-llava", steps=1000)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.pool, args.check = 10, 1000, 20
    C.set_threads(args.threads)
    C.quiet()
    torch.manual_seed(0)
    t0 = time.time()
    log = G.log
    model, processor = build(args.clip)
    tok = processor.tokenizer  # type: ignore[attr-defined]
    n_image = model.config.image_seq_length
    image_id = model.config.image_token_id
    trainable = [p for n, p in model.named_parameters() if "vision_tower" not in n]
    for n, p in model.named_parameters():
        p.requires_grad = "vision_tower" not in n
    G.report_parameters(model, trainable)

    def render(prompt: str | None) -> str:
        text = C.LLAVA_CAPTION_PROMPT if prompt is None else prompt
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return str(processor.apply_chat_template(messages, add_generation_prompt=True))  # type: ignore[attr-defined]

    def expand(ids: list[int]) -> list[int]:
        k = ids.index(image_id)
        return ids[:k] + [image_id] * n_image + ids[k + 1 :]

    make = G.ExampleMaker(tok, render, expand)
    pixels, labels = C.render_pool(POOL_SEED0, args.pool, processes=2, salt=2)
    model.eval()
    tower = model.model.vision_tower
    feats = G.cache_features(
        lambda x: tower(x, output_hidden_states=True).hidden_states[-1], torch.from_numpy(pixels)
    )
    log(f"pool of {len(feats)}: rendered and encoded in {time.time() - t0:.0f} s")

    G.check_forward(model, forward, make, tok.pad_token_id, pixels, feats, image_id)

    model.train()
    tower.eval()
    G.train_and_save(
        model,
        processor,
        trainable,
        feats,
        labels,
        make,
        forward,
        image_id,
        tok.pad_token_id,
        args,
        5,
        t0,
        bf16=args.bf16,
    )


def forward(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor, image_id: int
) -> torch.Tensor:
    """LLaVA's forward with the tower's (cached) last hidden states in place of pixels."""
    inner = model.model  # type: ignore[attr-defined]
    embeds = inner.get_input_embeddings()(ids)
    image = inner.multi_modal_projector(feats)
    slots = (ids == image_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(slots, image.to(embeds.dtype))
    hidden = inner.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    logits: torch.Tensor = model.lm_head(hidden)  # type: ignore[attr-defined]
    return logits


if __name__ == "__main__":
    main()
