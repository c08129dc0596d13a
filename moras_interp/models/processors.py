"""Processors that work without torchvision, and the fallback :func:`load_model` uses for them.

The stock Qwen2-VL / Qwen2.5-VL / InternVL processors include a video processor, which needs torchvision; without
it ``AutoProcessor.from_pretrained`` fails or silently returns the bare tokenizer. The stock PaliGemma processor
refuses text-only prompts. The classes here are image + text processors that load from the same checkpoint
files (``Cls.from_pretrained(path)``); :func:`fallback_processor` picks one by ``config.model_type``.
"""

from __future__ import annotations

from typing import Any

from transformers import (
    InternVLProcessor,
    PaliGemmaProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)


class _ImageOnly:
    """Mixin for processors whose stock class also wants a video processor: images and text only.

    Without torchvision the stock classes cannot be built at all: a video processor needs torchvision, and
    transformers 5.x rejects ``video_processor=None`` too (``ProcessorMixin.check_argument_for_proper_class``
    looks ``VideoProcessorMixin`` up in ``VIDEO_PROCESSOR_MAPPING``, a placeholder without torchvision:
    ``AttributeError: ... has no attribute '_extra_content'``). Dropping ``video_processor`` from the
    processor's attributes makes ``__init__``, ``repr``, ``to_dict`` and ``save_pretrained``/``from_pretrained``
    (of this class) treat it as an image + text processor; the stock ``__init__`` still passes its (``None``)
    ``video_processor`` positionally, which ``ProcessorMixin.__init__`` ignores past the declared attributes
    (so a video processor given here is ignored, too). No ``__init__`` override: ``from_pretrained`` reads the
    stock ``__init__`` signature.
    """

    @classmethod
    def get_attributes(cls) -> list[str]:
        return [a for a in super().get_attributes() if a != "video_processor"]  # type: ignore[misc]


class Qwen2VLProcessorImageOnly(_ImageOnly, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor (images and text only)."""


class Qwen2_5_VLProcessorImageOnly(_ImageOnly, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor (images and text only)."""


class InternVLProcessorImageOnly(_ImageOnly, InternVLProcessor):
    """``InternVLProcessor`` without a video processor (images and text only)."""


class PaliGemmaProcessorTextOk(PaliGemmaProcessor):
    """``PaliGemmaProcessor`` that also encodes text-only prompts, as ``<bos>text\\n``.

    The stock processor raises ``ValueError`` when ``images`` is None; with images it behaves unchanged.
    """

    def validate_inputs(self, images: Any = None, text: Any = None, **kwargs: Any) -> None:
        if images is None and text is not None:
            ProcessorMixin.validate_inputs(self, images=images, text=text, **kwargs)
            return
        super().validate_inputs(images=images, text=text, **kwargs)

    def prepare_inputs_layout(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        images, text, videos, audio = super().prepare_inputs_layout(images=images, text=text, **kwargs)
        if images is None and text is not None:
            bos = self.tokenizer.bos_token
            text = [t if t.startswith(bos) else f"{bos}{t}\n" for t in text]
        return images, text, videos, audio


FALLBACK_PROCESSORS: dict[str, type] = {
    "qwen2_vl": Qwen2VLProcessorImageOnly,
    "qwen2_5_vl": Qwen2_5_VLProcessorImageOnly,
    "internvl": InternVLProcessorImageOnly,
    "paligemma": PaliGemmaProcessorTextOk,
}
"""``config.model_type`` → image + text processor class loadable with ``from_pretrained``."""


def fallback_processor(model_type: str, path: str, **kwargs: Any) -> Any | None:
    """The image + text processor of ``model_type`` loaded from ``path``, or None when there is none."""
    cls = FALLBACK_PROCESSORS.get(model_type)
    return None if cls is None else cls.from_pretrained(path, **kwargs)
