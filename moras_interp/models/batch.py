"""Turning images + prompts into a left-padded model batch with a :class:`TokenLayout` per example."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from moras_interp.models.adapters.base import Adapter
from moras_interp.models.images import load_image
from moras_interp.models.layout import ImageLayout, PatchGrid, TokenLayout

ImageInput = Image.Image | str | Path | None | Sequence[Image.Image | str | Path]


@dataclass
class Batch:
    """A processed, left-padded batch.

    Attributes:
        inputs: processor output (``input_ids`` [b, pos], ``attention_mask`` [b, pos], ``pixel_values`` …).
        layouts: one :class:`TokenLayout` per example.
        prompts: the instructions as given.
        texts: the full rendered prompt strings (chat template applied).
        images: the original images per example (empty list for text-only examples).
    """

    inputs: dict[str, Any]
    layouts: list[TokenLayout]
    prompts: list[str]
    texts: list[str]
    images: list[list[Image.Image]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.layouts)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def to(self, device: torch.device | str | None, dtype: torch.dtype | None = None) -> Batch:
        """Moves tensors to ``device``; floating tensors (pixel values) are cast to ``dtype`` if given."""
        if device is None and dtype is None:
            return self
        moved: dict[str, Any] = {}
        for k, v in self.inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device) if device is not None else v
                if dtype is not None and v.is_floating_point():
                    v = v.to(dtype)
            moved[k] = v
        return Batch(moved, self.layouts, self.prompts, self.texts, self.images)


def normalise_images(images: Sequence[ImageInput] | None, n: int) -> list[list[Image.Image]]:
    """Per example, a list of PIL images (empty for text-only)."""
    if images is None:
        return [[] for _ in range(n)]
    if len(images) != n:
        raise ValueError(
            f"Got {len(images)} image entries for {n} prompts: pass one entry per prompt (an image, a list of "
            "images, or None for a text-only prompt)."
        )
    out: list[list[Image.Image]] = []
    for item in images:
        if item is None:
            out.append([])
        elif isinstance(item, (Image.Image, str, Path)):
            out.append([load_image(item)])
        else:
            out.append([load_image(x) for x in item])
    return out


def render_prompt(adapter: Adapter, prompt: str, n_images: int, *, chat: bool, add_generation_prompt: bool,
                  system: str | None = None) -> str:
    """The prompt string the processor receives (chat template applied, or placeholders prepended)."""
    if not chat:
        return "".join(adapter.image_placeholder() + "\n" for _ in range(n_images)) + prompt
    content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": prompt})
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    proc = adapter.processor
    if getattr(proc, "chat_template", None) is None and getattr(proc.tokenizer, "chat_template", None) is None:
        raise ValueError("This processor has no chat template: pass chat=False (placeholders are then prepended).")
    return proc.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def find_subsequence(row: list[int], sub: list[int]) -> int:
    """Start index of the LAST occurrence of ``sub`` in ``row``; -1 if absent."""
    n = len(sub)
    if n == 0:
        return -1
    for s in range(len(row) - n, -1, -1):
        if row[s : s + n] == sub:
            return s
    return -1


def instruction_positions(tokenizer: Any, row: list[int], prompt: str) -> torch.Tensor:
    """Positions of the prompt's tokens in a row (exact match, else all but the first token + 1 before).

    Subword tokenizers can merge the instruction's first token with the template text before it; the
    fallback matches the stable remainder and extends one position to the left.
    """
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    s = find_subsequence(row, ids)
    if s >= 0:
        return torch.arange(s, s + len(ids))
    if len(ids) > 1:
        s = find_subsequence(row, ids[1:])
        if s >= 1:
            return torch.arange(s - 1, s + len(ids) - 1)
    return torch.zeros(0, dtype=torch.long)


def build_layouts(adapter: Adapter, enc: dict[str, Any], images: list[list[Image.Image]],
                  prompts: list[str]) -> list[TokenLayout]:
    """One :class:`TokenLayout` per row of ``enc`` (left padded)."""
    ids = enc["input_ids"]
    mask = enc.get("attention_mask")
    specs = adapter.image_specs(enc, images) if any(images) else [[] for _ in images]
    tid = adapter.image_token_id
    layouts = []
    for b in range(ids.shape[0]):
        row = ids[b]
        img_pos = (row == tid).nonzero().flatten()
        need = sum(s.n_tokens for s in specs[b])
        if img_pos.numel() != need:
            raise ValueError(
                f"Example {b}: the sequence holds {img_pos.numel()} image tokens (id {tid}) but its "
                f"{len(images[b])} image(s) need {need}. Check that the prompt has exactly one image "
                "placeholder per image (don't add your own when chat=True) and that the processor matches the model."
            )
        n_pad = int((mask[b] == 0).sum()) if mask is not None else 0
        im_layouts, start = [], 0
        for spec, im in zip(specs[b], images[b]):
            pos = img_pos[start : start + spec.n_tokens]
            grids = [PatchGrid(g.name, g.rows, g.cols, pos[g.offsets], g.boxes) for g in spec.grids]
            im_layouts.append(ImageLayout(pos, grids, (im.width, im.height), pos[spec.separators]))
            start += spec.n_tokens
        instr = instruction_positions(adapter.processor.tokenizer, row.tolist(), prompts[b])
        layouts.append(TokenLayout(int(row.numel()), n_pad, im_layouts, instr, int(row.numel()) - 1))
    return layouts


class UnknownTokenWarning(UserWarning):
    """Words of a prompt that the tokenizer maps to its unknown token (the model never sees them)."""


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The pieces of ``text`` the tokenizer maps to ``unk_token_id`` ([] without an unknown token)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not text:
        return []
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [text[a:b] or tokenizer.unk_token for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
                if i == unk]
    except (NotImplementedError, TypeError, ValueError):  # slow tokenizers: no offsets, tokenize word by word
        return [w for w in text.split() if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]


def warn_unknown_words(tokenizer: Any, input_ids: torch.Tensor, texts: Sequence[str]) -> None:
    """One :class:`UnknownTokenWarning` naming the words of ``texts`` that became the unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not bool((input_ids == unk).any()):
        return
    words = list(dict.fromkeys(w for t in texts for w in unknown_words(tokenizer, t)))
    shown = ", ".join(repr(w) for w in words[:20]) + (f" (+{len(words) - 20} more)" if len(words) > 20 else "")
    warnings.warn(f"{len(words) or 'Some'} word(s) are not in the tokenizer's vocabulary and became "
                  f"{tokenizer.unk_token!r}: {shown or '(in the chat template)'}. The model cannot read them; "
                  "rephrase with known words.", UnknownTokenWarning, stacklevel=4)


def prepare_batch(adapter: Adapter, images: Sequence[ImageInput] | None, prompts: Sequence[str] | str, *,
                  chat: bool = True, add_generation_prompt: bool = True, system: str | None = None) -> Batch:
    """Applies chat template + processor with left padding, and computes the token layouts."""
    if isinstance(prompts, str):
        prompts = [prompts]
        images = None if images is None else [images]  # type: ignore[list-item]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prepare() got an empty list of prompts.")
    ims = normalise_images(images, len(prompts))
    texts = [render_prompt(adapter, p, len(i), chat=chat, add_generation_prompt=add_generation_prompt,
                           system=system) for p, i in zip(prompts, ims)]
    proc = adapter.processor
    tok = proc.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:  # e.g. Llama-style tokenizers without a pad token: pad with EOS (masked anyway)
        if tok.eos_token is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad with: set "
                             "model.processor.tokenizer.pad_token before batching.")
        tok.pad_token = tok.eos_token
    kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
    if any(ims):
        kwargs["images"] = adapter.processor_images(ims)
    try:
        enc = dict(proc(**kwargs))
    except ValueError as e:
        if "image" not in str(e).lower():
            raise
        n_img = [len(i) for i in ims]
        raise ValueError(
            f"The processor rejected the batch: {e}\nImages per prompt: {n_img}. "
            + ("With chat=True, prepare() inserts one image placeholder per image itself: remove placeholders such "
               f"as {adapter.image_placeholder()!r} from the prompts." if chat else
               "With chat=False, prepare() prepends one placeholder per image: don't add your own.")
        ) from e
    mask = enc.get("attention_mask")
    if mask is not None and not bool(mask[:, -1].all()):
        raise ValueError("The processor padded on the right; prepare() needs left padding (the last position must "
                         "be each prompt's last token). Check processor.tokenizer.padding_side.")
    warn_unknown_words(tok, enc["input_ids"], [*prompts, *([system] if system else [])])
    return Batch(enc, build_layouts(adapter, enc, ims, prompts), prompts, texts, ims)
