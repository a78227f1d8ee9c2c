"""Train models/shapes-blip2: a Blip2ForConditionalGeneration (OPT language model) on shapes-clip's vision.

    .venv/bin/python train/train_blip2.py             # the recorded run (needs models/shapes-clip)
    .venv/bin/python train/train_blip2.py --smoke     # seconds: tiny pool, a few steps

Vision: BLIP-2's vision model is CLIP's tower with three differences — q, k and v fused into one ``qkv``
linear (an exact copy), a bias on the patch embedding (set to zero: exact), and no ``pre_layrnorm`` on the
embeddings (not representable exactly: a LayerNorm divides each token by its own spread). So the tower
is built with CLIP's activation (quick_gelu) and epsilon, its weights are copied from models/shapes-clip,
the missing LayerNorm is folded into the embeddings as the linear map it is at the data's median token
spread (exact for the class token, whose embedding does not depend on the image), and then the whole
tower is distilled for a few minutes towards the frozen CLIP tower: mean squared error between BLIP-2's
``last_hidden_state`` (post-LayerNorm, what the Q-Former reads) and CLIP's post-LayerNorm hidden states,
all 65 tokens. The distilled tower is checked through CLIP's own projection and text tower (zero-shot
top-1 on held-out images) and then frozen.

On top: 8 query tokens, a 2-layer Q-Former (width 128, cross-attention in every layer, no dropout), a
projection, and an OPT language model (width 128, 2 layers, 4 heads, FFN 256, untied head,
``tie_word_embeddings=False``) with a hand-made byte-level BPE tokenizer in which every word of the world's
prompts is one token (train/common.py). These are trained on cached tower outputs for a pool of 20 k
augmented renderings (seeds 200 000 000 on), four tasks per image with the prompts mmcli renders for
BLIP-2: the image alone -> "a red circle"; "Question: What color is the shape? Answer:" (or a paraphrase)
-> "red"; "Question: What shape is it? Answer:" -> "circle"; "Question: What is in this image? Answer:" ->
"red circle"; loss on the answer tokens and EOS. AdamW lr 2e-3, 4 % warm-up then cosine, fp32, 1 thread.
Checked at the end through mmcli's own backend on 300 held-out images.

Deterministic: seeded torch / random; same command, same weights.
"""

from __future__ import annotations

import argparse
import time

import common as C
import gen_common as G
import torch

POOL_SEED0 = 200_000_000
DISTIL_SEED0 = 300_000_000
QUERY_TOKENS = 8


def build(clip: torch.nn.Module) -> tuple[torch.nn.Module, object]:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tok = C.opt_tokenizer()
    vc = clip.config.vision_config  # type: ignore[attr-defined]
    config = Blip2Config(
        vision_config={
            "hidden_size": vc.hidden_size,
            "intermediate_size": vc.intermediate_size,
            "num_hidden_layers": vc.num_hidden_layers,
            "num_attention_heads": vc.num_attention_heads,
            "image_size": vc.image_size,
            "patch_size": vc.patch_size,
            "hidden_act": vc.hidden_act,
            "layer_norm_eps": vc.layer_norm_eps,
            "qkv_bias": True,
        },
        qformer_config={
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "encoder_hidden_size": vc.hidden_size,
            "cross_attention_frequency": 1,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "vocab_size": 8,  # the Q-Former's text input is not used by Blip2ForConditionalGeneration
            "max_position_embeddings": 32,
        },
        text_config={
            "model_type": "opt",
            "vocab_size": len(tok),  # type: ignore[arg-type]
            "hidden_size": 128,
            "word_embed_proj_dim": 128,
            "ffn_dim": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 256,  # long user prompts must not overflow the positions
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "tie_word_embeddings": False,
            "bos_token_id": tok.bos_token_id,  # type: ignore[attr-defined]
            "eos_token_id": tok.eos_token_id,  # type: ignore[attr-defined]
            "pad_token_id": tok.pad_token_id,  # type: ignore[attr-defined]
        },
        num_query_tokens=QUERY_TOKENS,
        image_token_index=tok.convert_tokens_to_ids("<image>"),  # type: ignore[attr-defined]
        tie_word_embeddings=False,
    )
    model = Blip2ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.eos_token_id  # type: ignore[attr-defined]
    model.generation_config.bos_token_id = tok.bos_token_id  # type: ignore[attr-defined]
    model.generation_config.pad_token_id = tok.pad_token_id  # type: ignore[attr-defined]
    images = BlipImageProcessor(size={"height": C.IMAGE_SIZE, "width": C.IMAGE_SIZE})
    processor = Blip2Processor(image_processor=images, tokenizer=tok, num_query_tokens=QUERY_TOKENS)
    return model, processor


@torch.no_grad()
def copy_clip_vision(
    blip_vision: torch.nn.Module, clip_vision: torch.nn.Module, pixels: torch.Tensor
) -> float:
    """CLIP's tower into BLIP-2's, pre_layrnorm folded in at the median token spread of ``pixels``.

    Returns that spread.
    """
    src, dst = clip_vision, blip_vision
    ln = src.pre_layrnorm  # type: ignore[attr-defined]
    gamma, beta = ln.weight, ln.bias
    emb = src.embeddings  # type: ignore[attr-defined]
    patches = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (N, 64, D)
    tokens = patches + emb.position_embedding.weight[1:]
    spread = float(tokens.var(-1, unbiased=False).add(ln.eps).sqrt().median())
    w = emb.patch_embedding.weight  # (D, 3, p, p); out channels first
    centred = w - w.mean(0, keepdim=True)
    d_emb = dst.embeddings  # type: ignore[attr-defined]
    d_emb.patch_embedding.weight.copy_(centred * (gamma / spread).view(-1, 1, 1, 1))
    d_emb.patch_embedding.bias.copy_(beta)
    pos = emb.position_embedding.weight  # (65, D)
    d_emb.position_embedding[0, 1:].copy_((pos[1:] - pos[1:].mean(-1, keepdim=True)) * gamma / spread)
    d_emb.position_embedding[0, 0].zero_()
    d_emb.class_embedding[0, 0].copy_(ln(emb.class_embedding + pos[0]))  # exact: no image in it
    for a, b in zip(src.encoder.layers, dst.encoder.layers, strict=False):  # type: ignore[attr-defined]
        attn = a.self_attn
        b.self_attn.qkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        b.self_attn.qkv.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        b.self_attn.projection.load_state_dict(attn.out_proj.state_dict())
        b.layer_norm1.load_state_dict(a.layer_norm1.state_dict())
        b.layer_norm2.load_state_dict(a.layer_norm2.state_dict())
        b.mlp.load_state_dict(a.mlp.state_dict())
    dst.post_layernorm.load_state_dict(src.post_layernorm.state_dict())  # type: ignore[attr-defined]
    return spread


def teacher_states(clip_vision: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP's hidden states after its post-LayerNorm: what BLIP-2's vision model should output."""
    out = clip_vision(pixel_values=x).last_hidden_state
    return clip_vision.post_layernorm(out)  # type: ignore[attr-defined,no-any-return]


def zero_shot(clip: torch.nn.Module, states_of: object, images: list, scenes: list) -> float:
    """Top-1 over the 24 labels of CLIP's projection + text tower on ``states_of(pixels)``'s class token."""
    tok = C.clip_tokenizer()
    enc = tok([f"a photo of a {label}." for label in C.LABELS], padding=True, return_tensors="pt")  # type: ignore[operator]
    with torch.inference_mode():
        txt = torch.nn.functional.normalize(clip.get_text_features(**enc).pooler_output, dim=-1)  # type: ignore[operator]
        x = torch.from_numpy(__import__("numpy").stack([C.preprocess(im) for im in images]))
        cls = states_of(x)[:, 0]  # type: ignore[operator]
        img = torch.nn.functional.normalize(clip.visual_projection(cls), dim=-1)  # type: ignore[operator]
        pred = (img @ txt.T).argmax(-1).tolist()
    return sum(C.LABELS[p] == s.label for p, s in zip(pred, scenes, strict=False)) / len(scenes)


def distil(model: torch.nn.Module, clip: torch.nn.Module, args: argparse.Namespace, log: object) -> None:
    student, teacher = model.vision_model, clip.vision_model  # type: ignore[attr-defined]
    teacher.eval()
    pixels, _ = C.render_pool(DISTIL_SEED0, args.distil_pool, processes=2, salt=3)
    pool = torch.from_numpy(pixels)
    mean, std = torch.tensor(C.MEAN).view(1, 3, 1, 1), torch.tensor(C.STD).view(1, 3, 1, 1)
    sample = (pool[:512].float() / 255 - mean) / std
    spread = copy_clip_vision(student, teacher, sample)
    images, scenes = C.eval_set(args.check, C.EVAL_SEED0 + 20_000)
    student.eval()
    with torch.inference_mode():
        err = (
            (student(pixel_values=sample[:64]).last_hidden_state - teacher_states(teacher, sample[:64]))
            .pow(2)
            .mean()
        )
    log(
        f"distil: token spread {spread:.3f}; folded start: mse {err.item():.4f}, zero-shot top-1 "
        f"{zero_shot(clip, lambda x: student(pixel_values=x).last_hidden_state, images, scenes):.3f} "  # type: ignore[operator]
        f"(CLIP itself {zero_shot(clip, lambda x: teacher_states(teacher, x), images, scenes):.3f})"
    )
    student.train()
    params = list(student.parameters())
    optim = torch.optim.AdamW(params, lr=args.distil_lr, betas=(0.9, 0.98), weight_decay=0.0)
    gen = torch.Generator().manual_seed(7)
    t0 = time.time()
    for step in range(args.distil_steps):
        for group in optim.param_groups:
            group["lr"] = C.lr_at(step, args.distil_steps, args.distil_lr)
        idx = torch.randint(len(pool), (args.batch,), generator=gen)
        x = C.dihedral((pool[idx].float() / 255 - mean) / std, int(torch.randint(8, (1,), generator=gen)))
        with torch.no_grad():
            target = teacher_states(teacher, x)  # type: ignore[arg-type]
        loss = (student(pixel_values=x).last_hidden_state - target).pow(2).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if (step + 1) % 50 == 0 or step + 1 == args.distil_steps:
            log(
                f"distil step {step + 1}/{args.distil_steps} mse {loss.item():.5f} "
                f"{(time.time() - t0) / (step + 1):.3f} s/step"
            )
    student.eval()
    log(
        f"distilled: zero-shot top-1 through CLIP's head "
        f"{zero_shot(clip, lambda x: student(pixel_values=x).last_hidden_state, images, scenes):.3f}"
    )  # type: ignore[operator]
    for p in params:
        p.requires_grad = False


def forward(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor, image_id: int
) -> torch.Tensor:
    """Blip2ForConditionalGeneration's forward with the vision model's (cached) output in place of pixels."""
    m = model
    query = m.query_tokens.expand(feats.shape[0], -1, -1)  # type: ignore[attr-defined]
    ones = torch.ones(feats.shape[:-1], dtype=torch.long)
    out = m.qformer(query_embeds=query, encoder_hidden_states=feats, encoder_attention_mask=ones)  # type: ignore[operator]
    image = m.language_projection(out.last_hidden_state)  # type: ignore[operator]
    embeds = m.language_model.get_input_embeddings()(ids)  # type: ignore[attr-defined]
    slots = (ids == image_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(slots, image.to(embeds.dtype))
    logits: torch.Tensor = m.language_model(inputs_embeds=embeds, attention_mask=mask).logits  # type: ignore[operator]
    return logits


def main() -> None:
    parser = G.parser(__doc__.split("\n")[0], "shapes-blip2", steps=1500)
    parser.add_argument("--distil-steps", type=int, default=400)
    parser.add_argument("--distil-pool", type=int, default=20_000)
    parser.add_argument("--distil-lr", type=float, default=5e-4)
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.pool, args.check, args.distil_steps, args.distil_pool = 10, 1000, 20, 5, 1000
    C.set_threads(args.threads)
    C.quiet()
    torch.manual_seed(0)
    t0 = time.time()
    log = G.log
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(args.clip).eval()
    model, processor = build(clip)
    tok = processor.tokenizer  # type: ignore[attr-defined]
    image_id = model.config.image_token_id
    distil(model, clip, args, log)
    log(f"vision ready at {(time.time() - t0) / 60:.1f} min")

    trainable = [p for n, p in model.named_parameters() if not n.startswith("vision_model")]
    G.report_parameters(model, trainable)
    question_template = "Question: {} Answer:"
    make = G.ExampleMaker(
        tok,
        lambda prompt: "" if prompt is None else question_template.format(prompt),
        lambda ids: [image_id] * QUERY_TOKENS + ids,
    )
    pixels, labels = C.render_pool(POOL_SEED0, args.pool, processes=2, salt=4)
    model.eval()
    feats = G.cache_features(
        lambda x: model.vision_model(pixel_values=x).last_hidden_state, torch.from_numpy(pixels)
    )
    log(f"pool of {len(feats)}: rendered and encoded at {(time.time() - t0) / 60:.1f} min")

    G.check_forward(model, forward, make, tok.pad_token_id, pixels, feats, image_id)

    model.train()
    model.vision_model.eval()
    G.train_and_save(
        model, processor, trainable, feats, labels, make, forward, image_id, tok.pad_token_id, args, 6, t0
    )


if __name__ == "__main__":
    main()
