"""Per-architecture tiny configs and processors for :func:`moras_interp.models.tiny.build_tiny`.

Each ``build_<arch>(shape)`` returns ``(model_class, config, processor)``; ``build_tiny`` seeds torch and
instantiates the model. Sizes are chosen so the default 60×40 ``tiny_image()`` gives a small but
non-trivial image-token layout (several tiles, a thumbnail, merges, windows); see the table in
:mod:`moras_interp.models.tiny`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    GemmaConfig,
    GotOcr2ImageProcessorPil,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from moras_interp.models.processors import (
    InternVLProcessorImageOnly,
    PaliGemmaProcessorTextOk,
    Qwen2_5_VLProcessorImageOnly,
    Qwen2VLProcessorImageOnly,
)
from moras_interp.models.tiny import chat_template, make_word_tokenizer

HIDDEN = 64
"""Text hidden size; 4 heads of 16."""
HEADS = 4
INTERMEDIATE = 128
V_HIDDEN = 32
"""Vision hidden size; 2 heads of 16, 2 layers, 14-px patches."""
V_HEADS = 2
V_LAYERS = 2
V_INTERMEDIATE = 64
PATCH = 14

_CHATML = {"system": "<|im_start|>system\n", "user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"}
_VICUNA = {"system": "", "user": "USER: ", "assistant": "ASSISTANT: "}


@dataclass(frozen=True)
class TextShape:
    """The text-decoder knobs :func:`build_tiny` exposes."""
    num_layers: int = 2
    kv_heads: int = 2

    def llama_like(self, vocab_size: int, **ids: Any) -> dict[str, Any]:
        """Common decoder kwargs (Llama/Qwen2/Gemma style configs)."""
        return {"vocab_size": vocab_size, "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
                "num_hidden_layers": self.num_layers, "num_attention_heads": HEADS,
                "num_key_value_heads": self.kv_heads, "head_dim": HIDDEN // HEADS, "max_position_embeddings": 512,
                **ids}


def _ids(tok: Any) -> dict[str, int | None]:
    return {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


# --------------------------------------------------------------------------------------------- LLaVA family
def build_llava(shape: TextShape) -> tuple[type, Any, Any]:
    """LLaVA-1.5 style: CLIP 56 px (4×4 patches + CLS, CLS dropped), Llama decoder, vicuna-style template."""
    template = chat_template(roles=_VICUNA, end=" ", image="<image>\n", generation="ASSISTANT:")
    tok = make_word_tokenizer(["<image>"], {"image_token": "<image>"}, chat_template=template)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=V_HIDDEN, intermediate_size=V_INTERMEDIATE,
                                       num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS, image_size=56,
                                       patch_size=PATCH, projection_dim=V_HIDDEN),
        text_config=LlamaConfig(**shape.llama_like(len(tok), **_ids(tok))),
        image_token_index=tok.image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id)
    ip = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=template)
    return LlavaForConditionalGeneration, cfg, proc


def build_llava_next(shape: TextShape) -> tuple[type, Any, Any]:
    """LLaVA-NeXT anyres: 28-px tiles (2×2 patches), pinpoints up to 2×2 tiles, image_newline per row."""
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    # llava-v1.6-mistral: "[INST] <image>\nquestion [/INST]": the user turn itself ends with [/INST]
    roles = {"system": "", "user": "[INST] ", "assistant": ""}
    template = chat_template(roles=roles, end={"system": " ", "user": " [/INST]", "assistant": "</s> "},
                             image="<image>\n", generation="", bos=True)
    tok = make_word_tokenizer(["<image>", "[INST]", "[/INST]"], {"image_token": "<image>"}, chat_template=template)
    cfg = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=V_HIDDEN, intermediate_size=V_INTERMEDIATE,
                                       num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS, image_size=28,
                                       patch_size=PATCH, projection_dim=V_HIDDEN),
        text_config=LlamaConfig(**shape.llama_like(len(tok), **_ids(tok))),
        image_token_index=tok.image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_grid_pinpoints=pinpoints, pad_token_id=tok.pad_token_id)
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                    image_grid_pinpoints=pinpoints)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=template)
    return LlavaNextForConditionalGeneration, cfg, proc


# --------------------------------------------------------------------------------------------- Qwen family
_QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>"]


def _qwen_common(shape: TextShape) -> tuple[Any, dict[str, Any], Any, str]:
    """Tokenizer, config kwargs, image processor and chat template shared by Qwen2-VL and Qwen2.5-VL."""
    template = chat_template(roles=_CHATML, end="<|im_end|>\n",
                             image="<|vision_start|><|image_pad|><|vision_end|>",
                             generation="<|im_start|>assistant\n", default_system="you are a helpful assistant .")
    tok = make_word_tokenizer(_QWEN_SPECIALS, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
                              chat_template=template, pad="<|endoftext|>", bos=None, eos="<|im_end|>")
    text = shape.llama_like(len(tok), **_ids(tok))
    # M-RoPE: the sections (temporal, height, width) split head_dim/2 = 8 rotary frequencies
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    ids = {"image_token_id": tok.image_token_id, "video_token_id": tok.video_token_id,
           "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
           "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>")}
    # 60×40 is below min_pixels, so it is upscaled to 84×56 (patch grid 4×6, merged 2×3); max 112×112
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 84, "longest_edge": 112 * 112}, patch_size=PATCH,
                                  merge_size=2, temporal_patch_size=2)
    return tok, {"text_config": text, **ids}, ip, template


def build_qwen2_vl(shape: TextShape) -> tuple[type, Any, Any]:
    """Qwen2-VL: 14-px patches, 2×2 merge inside ``model.visual.merger``, M-RoPE, ChatML template."""
    tok, kw, ip, template = _qwen_common(shape)
    vision = {"depth": V_LAYERS, "embed_dim": V_HIDDEN, "hidden_size": HIDDEN, "mlp_ratio": 2,
              "num_heads": V_HEADS, "patch_size": PATCH, "spatial_merge_size": 2, "temporal_patch_size": 2}
    cfg = Qwen2VLConfig(vision_config=vision, **kw)
    proc = Qwen2VLProcessorImageOnly(image_processor=ip, tokenizer=tok, video_processor=None,
                                     chat_template=template)
    return Qwen2VLForConditionalGeneration, cfg, proc


def build_qwen2_5_vl(shape: TextShape) -> tuple[type, Any, Any]:
    """Qwen2.5-VL: as Qwen2-VL, plus window attention in vision layer 0 (windows of 2×2 merged tokens)."""
    tok, kw, ip, template = _qwen_common(shape)
    # window_size is in pixels: 56 px / 14 px / merge 2 = 2 merged tokens per window side
    vision = {"depth": V_LAYERS, "hidden_size": V_HIDDEN, "out_hidden_size": HIDDEN,
              "intermediate_size": V_INTERMEDIATE, "num_heads": V_HEADS, "patch_size": PATCH,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [1]}
    cfg = Qwen2_5_VLConfig(vision_config=vision, **kw)
    proc = Qwen2_5_VLProcessorImageOnly(image_processor=ip, tokenizer=tok, video_processor=None,
                                        chat_template=template)
    return Qwen2_5_VLForConditionalGeneration, cfg, proc


# --------------------------------------------------------------------------------------------- others
def build_idefics3(shape: TextShape) -> tuple[type, Any, Any]:
    """Idefics3 / SmolVLM: 56-px tiles (4×4 patches → pixel shuffle 2 → 2×2 tokens), tiles + global image.

    The processor writes ``<fake_token_around_image><row_i_col_j><image>*4`` per tile (row-major), then
    ``<fake_token_around_image><global-img><image>*4<fake_token_around_image>``.
    """
    rowcol = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    specials = ["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
                *rowcol]
    roles = {"system": "<|im_start|>System: ", "user": "<|im_start|>User:", "assistant": "Assistant:"}
    template = chat_template(roles=roles, end="<end_of_utterance>\n", image="<image>", generation="Assistant:")
    tok = make_word_tokenizer(specials, {"image_token": "<image>"}, chat_template=template,
                              bos="<|im_start|>", eos="<end_of_utterance>")
    scale = 2
    cfg = Idefics3Config(
        vision_config=Idefics3VisionConfig(hidden_size=V_HIDDEN, intermediate_size=V_INTERMEDIATE,
                                           num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS,
                                           image_size=56, patch_size=PATCH),
        text_config=LlamaConfig(**shape.llama_like(len(tok), **_ids(tok))),
        image_token_id=tok.image_token_id, scale_factor=scale, pad_token_id=tok.pad_token_id)
    # 60×40 → longest edge 168 (168×112) → split into 56-px tiles: 2 rows × 3 cols, plus the global image
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 168}, max_image_size={"longest_edge": 56},
                                   do_image_splitting=True)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=(56 // PATCH) ** 2 // scale**2,
                             chat_template=template)
    return Idefics3ForConditionalGeneration, cfg, proc


def build_gemma3(shape: TextShape) -> tuple[type, Any, Any]:
    """Gemma3: SigLIP 112 px (8×8 patches) pooled to 4×4 soft tokens; sliding-window (8) and global layers."""
    specials = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    roles = {"system": "<start_of_turn>system\n", "user": "<start_of_turn>user\n",
             "assistant": "<start_of_turn>model\n"}
    template = chat_template(roles=roles, end="<end_of_turn>\n", image="<start_of_image>",
                             generation="<start_of_turn>model\n", bos=True)
    tok = make_word_tokenizer(specials, named, chat_template=template, bos="<bos>", eos="<eos>")
    n = shape.num_layers
    layer_types = ["full_attention" if (i % 2 == 1 or i == n - 1) else "sliding_attention" for i in range(n)]
    text = Gemma3TextConfig(**shape.llama_like(len(tok), **_ids(tok)), sliding_window=8, layer_types=layer_types,
                            query_pre_attn_scalar=HIDDEN // HEADS)
    tokens = 16
    cfg = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(hidden_size=V_HIDDEN, intermediate_size=V_INTERMEDIATE,
                                         num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS, image_size=112,
                                         patch_size=PATCH),
        mm_tokens_per_image=tokens, boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id)
    ip = Gemma3ImageProcessorPil(size={"height": 112, "width": 112}, do_pan_and_scan=False)
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=tokens, chat_template=template)
    return Gemma3ForConditionalGeneration, cfg, proc


def build_internvl(shape: TextShape) -> tuple[type, Any, Any]:
    """InternVL (hf format): 56-px tiles (4×4 patches → pixel shuffle → 2×2 tokens), 1–6 tiles + thumbnail.

    ``<IMG_CONTEXT>`` in the prompt becomes ``<img><IMG_CONTEXT>*(4 × n_tiles)</img>``; a 60×40 image
    (aspect 3:2) is cut into 2 rows × 3 cols (``get_optimal_tiled_canvas`` returns (cols, rows)), then the
    thumbnail.
    """
    specials = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    template = chat_template(roles=_CHATML, end="<|im_end|>\n", image="<IMG_CONTEXT>\n",
                             generation="<|im_start|>assistant\n")
    tok = make_word_tokenizer(specials, named, chat_template=template, pad="<|endoftext|>", bos=None,
                              eos="<|im_end|>")
    seq = (56 // PATCH) ** 2 // 4
    cfg = InternVLConfig(
        vision_config=InternVLVisionConfig(hidden_size=V_HIDDEN, intermediate_size=V_INTERMEDIATE,
                                           num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS,
                                           image_size=[56, 56], patch_size=[PATCH, PATCH]),
        text_config=Qwen2Config(**shape.llama_like(len(tok), **_ids(tok))),
        image_token_id=tok.context_image_token_id, image_seq_length=seq, downsample_ratio=0.5)
    ip = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True, min_patches=1,
                                  max_patches=6)
    proc = InternVLProcessorImageOnly(image_processor=ip, tokenizer=tok, video_processor=None,
                                      image_seq_length=seq, chat_template=template)
    return InternVLForConditionalGeneration, cfg, proc


def build_paligemma(shape: TextShape) -> tuple[type, Any, Any]:
    """PaliGemma: SigLIP 56 px (4×4 patches = 16 image tokens before ``<bos>``), Gemma decoder."""
    roles = {"system": "", "user": "", "assistant": ""}
    # PaliGemma has no chat turns: "<image>…<image><bos>prefix\n" (the processor adds <bos> and "\n")
    template = chat_template(roles=roles, end="", image="<image>", generation="", images_first=True)
    tok = make_word_tokenizer(["<image>"], {"image_token": "<image>"}, chat_template=template, bos="<bos>",
                              eos="<eos>")
    ip = SiglipImageProcessorPil(size={"height": 56, "width": 56})
    ip.image_seq_length = (56 // PATCH) ** 2
    # the processor adds 1024 <locXXXX> and 128 <segXXX> tokens: size the vocabulary afterwards
    proc = PaliGemmaProcessorTextOk(image_processor=ip, tokenizer=tok, chat_template=template)
    cfg = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=V_HIDDEN, intermediate_size=V_INTERMEDIATE,
                                         num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS, image_size=56,
                                         patch_size=PATCH, projection_dim=HIDDEN),
        text_config=GemmaConfig(**shape.llama_like(len(tok), **_ids(tok))),
        image_token_index=tok.image_token_id, projection_dim=HIDDEN, hidden_size=HIDDEN)
    return PaliGemmaForConditionalGeneration, cfg, proc
