"""The recipe of a tiny real checkpoint, and the one function that builds any of them offline.

A ``Recipe`` says, for one model family: the transformers model class (its config class and model type
follow from it); how to make the tokenizer (``mmcli.testing.vocab``); the config's keyword arguments, given
that tokenizer; the image processor's settings (its class is the one transformers maps the model type to,
PIL backend first, unless ``image_class`` names another); the processor's own settings and chat template;
and, where the family has one, the video processor's settings. ``build(recipe, directory)`` then

1. seeds torch with ``recipe.seed`` (the same recipe always gives the same weights);
2. builds the tokenizer, the image processor and the processor (which may add tokens to the tokenizer);
3. builds the config at the tokenizer's final size, and the model from it with random weights;
4. runs the recipe's ``fix`` hook, for weights random init leaves useless (zero-initialised projectors);
5. for a generative recipe (``"caption"`` in its tasks), ``speak``-s: see below;
6. saves model and processor with ``save_pretrained``, as the hub lays checkpoints out; where the recipe
   has ``video`` settings, the processor is built without its video processor (those need torchvision) and
   the settings are written into ``processor_config.json`` as a saved checkpoint holds them.

Recipes come from ``mmcli.testing.contrastive`` (CLIP, SigLIP), ``.generative`` (BLIP-2, LLaVA,
LLaVA-NeXT) and ``.vlm`` (Qwen2-VL, Idefics2/3, Gemma 3), whose ``build_*`` entry points take their sizes,
and from tests/zoo.py, the table of every family mmcli should run. ``block``, ``vit``, ``decoder``, ``llm``
and ``bert`` are the config pieces they share: hidden size 32, two layers, four heads unless told.

Speaking: tiny random language models repeat one token whatever the image. Their language model's matrices,
the image projector and the LM head are scaled up, and the head rows of every token but letters, digits and
punctuation are zeroed, so greedy decoding writes non-empty text that changes with the image and the
prompt, one character per token, and never stops early: tests compare real strings. (Sampling may still
pick a zeroed token: those have logit 0, not -inf.) Models are untied: tied random embeddings echo the last
token.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcli.testing.vocab import LETTERS

CONTRASTIVE = ("classify", "embed")
GENERATIVE = ("caption", "vqa", "classify")
HIDDEN = 32
HEAD_SCALE = 3.0
LM_SCALE = 4.0
PROJECTOR_SCALE = 20.0


@dataclass(frozen=True)
class Recipe:
    """How to build one family's tiny checkpoint (see the module docstring)."""

    tasks: tuple[str, ...]  # what mmcli runs it for: CONTRASTIVE or GENERATIVE
    model: str  # the transformers model class; its config class and model type follow
    config: Callable[[Any], dict[str, Any]]  # the tokenizer -> config keyword arguments
    tokenizer: Callable[[], Any]
    image: dict[str, Any] = field(default_factory=dict)  # image processor settings
    processor: Callable[[Any], dict[str, Any]] = lambda tok: {}  # processor settings
    chat_template: str | None = None
    video: dict[str, Any] | None = None  # the video processor's settings (class name included)
    image_class: str | None = None  # the image processor class, when not the one transformers maps
    processor_class: str | Callable[[], type] | None = None  # likewise (a callable: chosen at build time)
    fix: Callable[[Any], None] | None = None  # weights that need more than random init
    projector: str | None = None  # speak(): the image projector's module path; None: found by anatomy
    language_key: str = "language_model"  # speak(): what the language model's parameter names hold
    seed: int = 0


def build(recipe: Recipe, directory: str | Path) -> Path:
    """Build ``recipe``'s checkpoint into ``directory`` (created) and return it."""
    import torch
    import transformers

    from mmcli.modeling.backends.base import quiet_transformers

    quiet_transformers()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    model_class = getattr(transformers, recipe.model)
    tok = recipe.tokenizer()
    processor = _processor(recipe, model_class.config_class.model_type, tok)  # may add tokens
    model = model_class(model_class.config_class(**recipe.config(tok))).eval()
    if recipe.fix is not None:
        recipe.fix(model)
    if "caption" in recipe.tasks:
        if recipe.projector is None:
            speak_by_anatomy(model, tok)
        else:
            speak(model, tok, model.get_submodule(recipe.projector), recipe.language_key)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if recipe.video is not None:
        _add_video_processor(out, recipe.video)
    return out


def _processor(recipe: Recipe, model_type: str, tok: Any) -> Any:
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    image_class = recipe.image_class
    if image_class is None:
        classes = IMAGE_PROCESSOR_MAPPING_NAMES[model_type]
        image_class = classes.get("pil") or classes["torchvision"]
    images = getattr(transformers, image_class)(**recipe.image)
    name = recipe.processor_class or PROCESSOR_MAPPING_NAMES[model_type]
    processor_class: Any = getattr(transformers, name) if isinstance(name, str) else name()
    # Video processors need torchvision: build without one, write its settings after (build()).
    takes_video = "video_processor" in inspect.signature(processor_class.__init__).parameters
    if recipe.video is not None and takes_video:
        processor_class = without_video(processor_class)
    kwargs = recipe.processor(tok)
    if recipe.chat_template is not None:
        kwargs["chat_template"] = recipe.chat_template
    with num2words_stand_in():
        return processor_class(image_processor=images, tokenizer=tok, **kwargs)


# -- config pieces ----------------------------------------------------------------------------------------
def block(hidden: int = HIDDEN, layers: int = 2, heads: int = 4, ffn: int = 2) -> dict[str, Any]:
    """A transformer stack's sizes: ``layers`` layers of width ``hidden``, MLPs ``ffn`` times as wide."""
    return {
        "hidden_size": hidden,
        "intermediate_size": ffn * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    }


def token_ids(tok: Any) -> dict[str, Any]:
    """The tokenizer's BOS, EOS and padding ids, as text configs name them."""
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def vit(**extra: Any) -> dict[str, Any]:
    """A CLIP/SigLIP-like vision tower: 32 px images in 8 px patches (16 patches)."""
    return block() | {"image_size": 32, "patch_size": 8} | extra


def decoder(tok: Any, hidden: int = HIDDEN, layers: int = 2, heads: int = 4, **extra: Any) -> dict[str, Any]:
    """A decoder-only language model at the tokenizer's size, with half as many key/value heads."""
    sizes = block(hidden, layers, heads) | {"num_key_value_heads": max(1, heads // 2)}
    return {"vocab_size": len(tok)} | sizes | token_ids(tok) | extra


def llm(tok: Any, **extra: Any) -> dict[str, Any]:
    """``decoder`` at the default sizes, untied (tied random heads echo), 1024 positions."""
    return decoder(tok, head_dim=HIDDEN // 4, max_position_embeddings=1024, tie_word_embeddings=False) | extra


def bert(tok: Any, **extra: Any) -> dict[str, Any]:
    """A BERT-like text encoder at the tokenizer's size, 64 positions."""
    return (
        {"vocab_size": len(tok)}
        | block()
        | {"max_position_embeddings": 64, "pad_token_id": tok.pad_token_id}
        | extra
    )


def init_zero_projectors(model: Any) -> None:
    """A ``fix``: zero-initialised projector matrices start random, or the image never reaches the text."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "projector" in name and param.dim() == 2 and not param.any():
                param.normal_(0.0, 0.02)


# -- speaking ---------------------------------------------------------------------------------------------
def speak(model: Any, tokenizer: Any, projector: Any, language_key: str = "language_model") -> None:
    """Make a random VLM write varied text that depends on the image (see the module's docstring): the
    language model's matrices (parameters whose name holds ``language_key``), ``projector`` and the head
    scaled up, the head rows of every token but letters, digits and punctuation zeroed."""
    language = [
        param
        for name, param in model.named_parameters()
        if language_key in name and param.dim() == 2 and "embed" not in name
    ]
    _scale(model.get_output_embeddings(), tokenizer, language, projector.parameters())


def speak_by_anatomy(model: Any, tokenizer: Any) -> None:
    """``speak`` with the parts found from the module tree (``mmcli.modeling.anatomy``)."""
    from mmcli.modeling import anatomy

    parts = anatomy.module_parts(model, generative=True)
    owned = [(name, param, anatomy.part_of(name, parts)) for name, param in model.named_parameters()]
    language = [p for name, p, owner in owned if owner == "llm" and p.dim() == 2 and "embed" not in name]
    projector = [p for _, p, owner in owned if owner == "input_projector"]
    heads = [model.get_submodule(path) for path in parts["output_projector"][:1]]
    _scale(heads[0] if heads else None, tokenizer, language, projector)


def _scale(head: Any, tokenizer: Any, language: Iterable[Any], projector: Iterable[Any]) -> None:
    import torch

    speaking = set(LETTERS)
    silent = [i for t, i in tokenizer.get_vocab().items() if not set(t) <= speaking and i < len(tokenizer)]
    with torch.no_grad():
        for param in language:
            param.mul_(LM_SCALE)
        for param in projector:
            param.mul_(PROJECTOR_SCALE)
        if head is not None:
            head.weight.mul_(HEAD_SCALE)
            head.weight[[i for i in silent if i < head.weight.shape[0]]] = 0.0


# -- processors with a video half -------------------------------------------------------------------------
def has_torchvision() -> bool:
    """transformers' video processors (part of Qwen2-VL's and SmolVLM's processors) need torchvision."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or built for another torch
        return False
    return True


def without_video(cls: Any) -> type:
    """``cls`` built with no video processor: ProcessorMixin takes its sub-processors from ``__init__``'s
    signature, so a subclass whose ``__init__`` has no ``video_processor`` skips it."""

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        cls.__init__(
            self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs
        )

    signature = inspect.signature(cls.__init__)  # what to_dict saves: the real class's settings
    params = [p for p in signature.parameters.values() if p.name != "video_processor"]
    __init__.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return type(cls.__name__, (cls,), {"__init__": __init__})


@contextmanager
def num2words_stand_in() -> Iterator[None]:
    """SmolVLM's processor refuses to build without ``num2words`` (it words video frame counts only)."""
    import importlib

    try:
        module: Any = importlib.import_module("transformers.models.smolvlm.processing_smolvlm")
    except ImportError:
        yield
        return
    saved = module.num2words
    module.num2words = module.num2words or str
    try:
        yield
    finally:
        module.num2words = saved


def _add_video_processor(out: Path, video: dict[str, Any]) -> None:
    """Write the video processor's settings into ``processor_config.json``, as ``save_pretrained`` does with
    torchvision installed: the image processor's, minus its class, plus the video processor's own."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    path = out / "processor_config.json"
    data = json.loads(path.read_text())
    settings = {k: v for k, v in data["image_processor"].items() if k != "image_processor_type"}
    data["video_processor"] = settings | video
    model_type = json.loads((out / "config.json").read_text())["model_type"]
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if name and hasattr(transformers, name):  # the real class, not the one built without its video half
        data["processor_class"] = name
        tokenizer_config = out / "tokenizer_config.json"
        settings = json.loads(tokenizer_config.read_text())
        settings["processor_class"] = name
        tokenizer_config.write_text(json.dumps(settings, indent=2) + "\n")
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
