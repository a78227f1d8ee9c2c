"""What a model's config and processor say without loading weights: context length, dtype, image tokens
per image, the default image size (``anatomy`` puts them on the card).
"""

from __future__ import annotations

from typing import Any

# -- config facts -----------------------------------------------------------------------------------------
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


def _count(source: Any, keys: tuple[str, ...]) -> tuple[int, str] | None:
    """The first of ``keys`` that ``source`` (a config or processor, or None) holds as a positive int, and
    that key."""
    for key in keys:
        value = getattr(source, key, None)
        if isinstance(value, int) and value > 0:
            return value, key
    return None


def context_length(config: Any) -> int | None:
    for source in (getattr(config, "text_config", None), config):
        if source is None:
            continue
        found = _count(source, CONTEXT_KEYS)
        if found is not None:
            return found[0]
    return None


def config_dtype(config: Any) -> str:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if dtype is None:
        return "float32 (not set)"
    return str(dtype).replace("torch.", "")


def _sub(config: Any, *names: str) -> Any:
    for name in names:
        sub = getattr(config, name, None)
        if sub is not None:
            return sub
    return None


CONFIG_TOKEN_COUNTS = ("num_query_tokens", "mm_tokens_per_image", "image_seq_length", "latent_query_num")


def image_tokens_from_config(config: Any) -> tuple[int | None, str]:
    """Image tokens per image the model config implies, when it says (query tokens, latents, pooled tokens,
    a fixed sequence length), else the vision tower's patch grid."""
    found = _count(config, CONFIG_TOKEN_COUNTS)
    if found is not None:
        return found[0], f"config {found[1]}"
    found = _count(_sub(config, "text_config"), ("num_image_tokens",))
    if found is not None:
        return found[0], "config text_config.num_image_tokens"
    perceiver = _sub(config, "perceiver_config")
    latents = getattr(perceiver, "resampler_n_latents", None)
    if isinstance(latents, int) and (
        getattr(perceiver, "use_resampler", True) or "idefics2" in config.model_type
    ):
        return latents, "config perceiver_config.resampler_n_latents"
    vision = _sub(config, "vision_config")
    size, patch = (
        _pair(getattr(vision, "image_size", None)),
        _pair(getattr(vision, "patch_size", None)),
    )
    if size and patch:
        tokens = (size[0] // patch[0]) * (size[1] // patch[1])
        merge = getattr(vision, "spatial_merge_size", None) or getattr(config, "scale_factor", None)
        if isinstance(merge, int) and merge > 1:
            tokens //= merge * merge
        return tokens, "vision patch grid"
    return None, "unknown"


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


PROCESSOR_TOKEN_COUNTS = (
    "num_image_tokens",
    "image_seq_length",
    "image_seq_len",
    "num_query_tokens",
)


def image_tokens_from_processor(processor: Any, config: Any = None) -> tuple[int | None, list[int] | None]:
    """Image tokens the processor puts in the text for one image at its default size: counted in its own
    output (the prompt from its chat template, else none or its image token), else transformers' own
    formula (``_get_num_multimodal_tokens``, as vLLM asks), else the fixed count the processor holds."""
    images = getattr(processor, "image_processor", processor)
    size = default_image_size(images)
    if size is not None and images is not processor:
        counted = _count_image_tokens(processor, size, _config_image_token(config))
        if counted:
            return counted, size
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if size is not None and counter is not None:
        try:
            data = counter(image_sizes=[tuple(size)])
            tokens = data.get("num_image_tokens") if hasattr(data, "get") else data.num_image_tokens
        except Exception:  # a processor that cannot say: its settings, then the config, answer
            tokens = None
        if tokens:
            return int(tokens[0]), size
    found = _count(processor, PROCESSOR_TOKEN_COUNTS)
    return (None if found is None else found[0]), size


def _config_image_token(config: Any) -> int | None:
    """The token id the model replaces with image features, when its config names one."""
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _count_image_tokens(processor: Any, size: list[int], token_id: int | None) -> int | None:
    from PIL import Image

    token = getattr(processor, "image_token", None)
    if token_id is None:
        token_id = getattr(processor, "image_token_id", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if token_id is None and token is not None and tokenizer is not None:
        token_id = tokenizer.convert_tokens_to_ids(str(token))
    if not isinstance(token_id, int):
        return None
    image = Image.new("RGB", (size[1], size[0]), (127, 127, 127))
    prompts: list[str] = []
    if getattr(processor, "chat_template", None):
        try:
            turn = [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": "x"}],
                }
            ]
            prompts.append(processor.apply_chat_template(turn, add_generation_prompt=True))
        except Exception:
            pass
    prompts += ["", str(token)] if token is not None else [""]
    for prompt in prompts:
        try:
            ids = processor(images=[image], text=[prompt], return_tensors="np")["input_ids"]
        except Exception:
            continue
        count = int((ids == token_id).sum())
        if count:
            return count
    return None


REFERENCE_SIDE = 448  # the image side that dynamic-resolution processors (a pixel budget) are asked about


def default_image_size(image_processor: Any) -> list[int] | None:
    """(height, width) an image processor resizes to, when its settings say: its crop when it crops, else
    its size; a pixel budget (Qwen-VL's min/max pixels) is asked about a 448 x 448 image."""
    keys = ("crop_size", "size") if getattr(image_processor, "do_center_crop", True) else ("size",)
    for key in keys:
        size = getattr(image_processor, key, None)
        if size is None:
            continue
        items = size.items() if isinstance(size, dict) else vars(size).items()
        sides = {k: int(v) for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool) and v}
        if "height" in sides and "width" in sides:
            return [sides["height"], sides["width"]]
        if "max_pixels" in sides or sides.get("longest_edge", 0) > 16384:
            return [REFERENCE_SIDE, REFERENCE_SIDE]
        for edge in ("shortest_edge", "longest_edge"):
            if edge in sides:
                return [sides[edge], sides[edge]]
    return None
