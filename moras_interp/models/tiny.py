"""Tiny random-weight multimodal models with matching local processors, for tests and demos.

``build_tiny(arch)`` returns ``(hf_model, processor)`` for one of :data:`TINY_ARCHS`. Nothing is downloaded:
each model is built from a tiny config (text decoder: hidden 64, 4 heads, 2 KV heads, 2 layers; vision tower:
hidden 32, 2 layers, 14-px patches) with deterministic random weights, and each processor is the real
transformers processor class (or an image-only subclass of it, see below) built around a word-level
tokenizer from :func:`make_word_tokenizer`. The outputs are meaningless; what is real is the *plumbing*:
module paths, image-token expansion (tiles, thumbnails, merges, pixel shuffles, newline tokens),
left-padded batches, position ids (M-RoPE), window attention (Qwen2.5-VL), sliding-window layers (Gemma3)
and eager/sdpa attention. A forward pass on CPU takes milliseconds, so the whole test-suite can check
every adapter against HF's own outputs.

What each tiny model exercises (counts for the default ``tiny_image()`` of 60×40 px, one image):

===========  ==========================================================================================  ======
arch         image path                                                                                  tokens
===========  ==========================================================================================  ======
llava        CLIP 56 px → 4×4 patch grid (CLS dropped)                                                       16
llava_next   anyres, 28-px tiles of 2×2 patches: base 2×2, then a 2×2-tile canvas (4×4) unpadded to 2×4      14
             with an ``image_newline`` ending each row (2×5)
qwen2_vl     60×40 upscaled to 84×56 px → grid_thw (1, 4, 6) → 2×2 merge → 2×3                                 6
qwen2_5_vl   as qwen2_vl; vision layer 0 uses windows of 2×2 merged tokens, so ``window_index`` is              6
             ``[0, 1, 3, 4, 2, 5]`` (not the identity); layer 1 is global
idefics3     168×112 px → 2 rows × 3 cols of 56-px tiles + the global image, 2×2 tokens each                  28
             (pixel shuffle); tiles named by ``<row_i_col_j>`` / ``<global-img>``
gemma3       SigLIP 112 px → 8×8 patches → 2×2 average pool → 4×4 soft tokens                                16
internvl     2 rows × 3 cols of 56-px tiles + thumbnail, 2×2 tokens each (pixel shuffle)                      28
paligemma    SigLIP 56 px → 4×4 patches, image tokens before ``<bos>``                                       16
===========  ==========================================================================================  ======

Images for a batch with one image per prompt are passed **flat** (``images=[img1, img2]``) for every arch
except **gemma3**, whose processor needs one list per prompt (``images=[[img1], [img2]]``); text-only
prompts are encoded with ``processor(text=[s], return_tensors="pt")`` for all eight.

Every processor carries a small chat template (on the processor and on its tokenizer) mimicking the real
model's turn structure with in-vocabulary words, e.g. LLaVA ``USER: <image> ... ASSISTANT:``, Qwen's
ChatML with ``<|vision_start|><|image_pad|><|vision_end|>``, Gemma3's ``<start_of_turn>`` turns with
``<start_of_image>``. The image token to count is always ``hf.config.image_token_id`` (for Gemma3,
``processor.image_token_id`` is the begin-of-image token instead).

Deviations from stock transformers, all local (no global patching):

* torchvision is optional. Image processors are the ``*ImageProcessorPil`` classes imported by their own
  names (no "falling back to Pil" warning). Qwen2-VL, Qwen2.5-VL and InternVL processors normally require a
  video processor, which cannot be built without torchvision, and ``ProcessorMixin`` rejects
  ``video_processor=None`` with an ``AttributeError`` in transformers 5.x (it looks the expected class up in
  the torchvision-only ``VIDEO_PROCESSOR_MAPPING``). They are therefore built as *image-only* subclasses
  (``Qwen2VLProcessorImageOnly`` etc. in ``models/processors.py``; ``isinstance`` of the stock class still holds)
  that do not declare a ``video_processor`` attribute. Videos are not supported; ``save_pretrained`` and
  ``<subclass>.from_pretrained`` round-trip (``AutoProcessor`` would look for the stock class).
* Gemma3's ``mm_input_projection_weight`` is zero-initialised by HF; the tiny model fills it with N(0, 0.02)
  (seeded) so that image features are not identically zero.
* The PaliGemma processor refuses text-only input; the tiny one accepts it and encodes it as
  ``<bos>text\\n`` (the image-free version of PaliGemma's prompt format).

Good to know when testing against these models:

* eager and sdpa models built with the same seed agree to ~1e-7 on every real token, but **not** at
  left-padding positions (fully masked query rows are handled differently); compare where
  ``attention_mask == 1``.
* The PaliGemma processor (stock behaviour) also returns ``token_type_ids`` and ``labels``; without a
  ``suffix`` all labels are -100, so ``hf(**enc).loss`` is NaN. The logits are unaffected.
* The tokenizer lower-cases its input, so ``"USER:"`` in a template encodes as ``user`` ``:``; only the
  special tokens are case-sensitive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

TINY_ARCHS: tuple[str, ...] = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3",
                               "internvl", "paligemma")
"""Architectures :func:`build_tiny` can build."""

_WORDS = (  # the project's prompts (MoRAS, AdaShield-S, ECSO), demo questions and chat-template words
    "what is in the image describe how do i make use the item this a an of to and for it safe unsafe "
    "question questions answer answered context write single sentence visual outline any safety critical "
    "read out text texts begin with shows evaluate following ensure that benign harmless should be normally "
    "however if malicious or illegal assistant apologize refuse user system model sorry cannot help bomb knife "
    "gun poison drug cup book ball above act activity am analyze based before but carefully content correctly "
    "dangerous detected determined engage examine execute given harmful holistically instead instruction items "
    "might not on please processing request safely suggest unethical you are helpful yes no can could would "
    "will my your me we they he she there here where when why who which picture photo shown show tell about "
    "from by at as was were has have had get build create kill weapon steal hack harm danger people person "
    "red green blue black white cat dog car man woman"
)
_PUNCT = (".", ",", "?", "!", ":", ";", "'", '"', "-", "(", ")", "[", "]", "{", "}", "/")
BASE_WORDS: tuple[str, ...] = tuple(dict.fromkeys([*_WORDS.split(), *_PUNCT]))
"""Ordinary English words (lower case) and punctuation in every tiny vocabulary; ``w0``…``w199`` follow."""

GENERIC_WORDS: tuple[str, ...] = tuple(f"w{i}" for i in range(200))


def make_word_tokenizer(specials: list[str], named: dict[str, str] | None = None, words: Iterable[str] = (),
                        chat_template: str | None = None, *, unk: str = "<unk>", pad: str = "<pad>",
                        bos: str | None = "<s>", eos: str = "</s>") -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer: lower-cased, BERT-style pre-tokenisation (words and single punctuation).

    Vocabulary, in id order: ``unk``, ``pad``, ``bos`` (if any), ``eos``, ``specials`` (and any value of
    ``named`` not already listed), :data:`BASE_WORDS`, ``words``, ``w0``…``w199``. Unknown words map to
    ``unk``. Special tokens are matched verbatim (case-sensitive) before normalisation. No token is added
    automatically (templates add ``bos_token`` where the real model has it). Padding side is left.

    Args:
        specials: special tokens (e.g. ``["<image>"]``); registered as additional special tokens.
        named: named special tokens, e.g. ``{"image_token": "<image>"}``; exposed as ``tok.image_token`` and
            ``tok.image_token_id`` (transformers 5 ``extra_special_tokens``), which processors read.
        words: extra vocabulary words (lower-cased).
        chat_template: Jinja chat template stored on the tokenizer.
        unk, pad, bos, eos: the basic special tokens (``bos=None`` for models without one, e.g. Qwen).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    named = dict(named or {})
    specials = list(dict.fromkeys([*specials, *named.values()]))
    basics = [t for t in (unk, pad, bos, eos) if t is not None]
    extra = [w.lower() for w in words]
    vocab = list(dict.fromkeys([*basics, *specials, *BASE_WORDS, *extra, *GENERIC_WORDS]))
    tk = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token=unk))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    kw: dict = {"tokenizer_object": tk, "unk_token": unk, "pad_token": pad, "eos_token": eos,
                "model_max_length": 4096, "padding_side": "left"}
    if bos is not None:
        kw["bos_token"] = bos
    if named:
        kw["extra_special_tokens"] = named
    if chat_template is not None:
        kw["chat_template"] = chat_template
    tok = PreTrainedTokenizerFast(**kw)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    tok.padding_side = "left"
    return tok


def chat_template(*, roles: dict[str, str], end: str | dict[str, str], image: str, generation: str,
                  bos: bool = False, default_system: str | None = None, images_first: bool = False) -> str:
    """A small Jinja chat template: ``[bos] {role prefix}{content}{end} ... [generation prompt]``.

    ``content`` is a string or a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` items,
    rendered in order (all images first with ``images_first``, as PaliGemma needs) with ``image`` for each
    image item. ``roles`` maps ``"system"``/``"user"``/``"assistant"`` to their turn prefixes and ``end``
    gives the turn suffix (one string, or one per role); ``default_system`` is emitted when the conversation
    has no system turn (as Qwen2-VL does).
    """
    import json

    def lit(s: str) -> str:
        return json.dumps(s)  # a JSON string is a valid Jinja string literal

    def dict_lit(d: dict[str, str]) -> str:
        return "{" + ", ".join(f"{lit(k)}: {lit(v)}" for k, v in d.items()) + "}"

    ends = end if isinstance(end, dict) else dict.fromkeys(roles, end)
    t = "{%- set roles = " + dict_lit(roles) + " -%}{%- set ends = " + dict_lit(ends) + " -%}"
    if bos:
        t += "{{- bos_token -}}"
    if default_system is not None:
        t += ("{%- if messages[0]['role'] != 'system' -%}{{- roles['system'] + " + lit(default_system)
              + " + ends['system'] -}}{%- endif -%}")
    img = "{%- if item['type'] == 'image' -%}{{- " + lit(image) + " -}}{%- endif -%}"
    txt = "{%- if item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    loop = "{%- for item in message['content'] -%}"
    items = (loop + img + "{%- endfor -%}" + loop + txt + "{%- endfor -%}") if images_first else (
        loop + img + txt + "{%- endfor -%}")
    t += (
        "{%- for message in messages -%}"
        "{{- roles[message['role']] -}}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}" + items + "{%- endif -%}"
        "{{- ends[message['role']] -}}"
        "{%- endfor -%}"
        + ("{%- if add_generation_prompt -%}{{- " + lit(generation) + " -}}{%- endif -%}" if generation else "")
    )
    return t


def tiny_image(width: int = 60, height: int = 40, seed: int = 0) -> Image.Image:
    """A deterministic RGB image: smooth colour gradients plus noise, with a filled ellipse and a rectangle."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    base = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                     np.broadcast_to(1.0 - (x + y) / 2, (height, width))], axis=-1)
    arr = np.clip(base * 200 + rng.normal(0, 25, size=(height, width, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    cx, cy = int(rng.integers(width // 4, 3 * width // 4 + 1)), int(rng.integers(height // 4, 3 * height // 4 + 1))
    r = max(2, min(width, height) // 5)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw.rectangle((1, 1, max(2, width // 6), max(2, height // 6)), fill=(255, 255, 255))
    return img


def build_tiny(arch: str, *, attn_implementation: str = "eager", seed: int = 0, num_layers: int = 2,
               gqa: bool = True) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny random-weight ``*ForConditionalGeneration`` model and its processor (see the module docstring).

    Args:
        arch: one of :data:`TINY_ARCHS`.
        attn_implementation: ``"eager"`` or ``"sdpa"``, applied to the text and vision sub-configs.
        seed: ``torch.manual_seed(seed)`` right before the weights are created (same seed → same weights,
            whatever ``attn_implementation``).
        num_layers: text decoder layers (Gemma3: every other layer, starting with layer 0, is a
            sliding-window layer with window 8; the last layer is always global).
        gqa: 2 key/value heads for the 4 query heads (grouped-query attention); 4 (plain MHA) otherwise.

    Returns:
        ``(model, processor)``: the model in ``eval()`` mode, float32, on CPU; the processor with a chat
        template and a left-padding tokenizer. Pass images flat (``images=[img1, img2]``), except for gemma3
        (``images=[[img1], [img2]]``).
    """
    from moras_interp.models import _tiny_builders as builders

    if arch not in TINY_ARCHS:
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}.")
    if attn_implementation not in ("eager", "sdpa"):
        raise ValueError(f"attn_implementation must be 'eager' or 'sdpa', got {attn_implementation!r}.")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
    model_cls, config, processor = getattr(builders, f"build_{arch}")(
        builders.TextShape(num_layers=num_layers, kv_heads=2 if gqa else 4))
    torch.manual_seed(seed)
    model = model_cls._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    if arch == "gemma3":
        # HF zero-initialises the soft-token projection, which would make every image feature exactly 0 (and
        # every image test vacuous): give it random weights too, from the same seed.
        w = model.model.multi_modal_projector.mm_input_projection_weight
        with torch.no_grad():
            w.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
    model.eval()
    return model, processor


def _register_tiny_names() -> None:
    """Register ``tiny:<arch>`` for every arch, so ``load_model("tiny:llava")`` works from Python and the CLI."""
    from functools import partial

    from moras_interp.models.registry import register_model

    def resolver(arch: str, attn_implementation: str | None = "eager", **_: object) -> tuple:
        return build_tiny(arch, attn_implementation=attn_implementation or "eager")

    for arch in TINY_ARCHS:
        register_model(f"tiny:{arch}", partial(resolver, arch))


_register_tiny_names()

__all__ = ["BASE_WORDS", "TINY_ARCHS", "build_tiny", "chat_template", "make_word_tokenizer", "tiny_image"]
