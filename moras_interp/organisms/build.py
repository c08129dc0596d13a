"""Building the organism's tokenizer, processor and (untrained) ``LlavaForConditionalGeneration``.

The tokenizer is a word-level ``tokenizers`` model (normalizer: Lowercase; pre-tokenizer: BERT-style split on
whitespace and punctuation, one token per punctuation mark) wrapped as a ``PreTrainedTokenizerFast`` that
prepends ``<s>``; its vocabulary covers every word of the toy world, the MoRAS stage-1/2 prompts and the
baseline prompts (AdaShield-S, ECSO). The chat template mimics LLaVA-1.5: ``"USER: <image>\\n{text}
ASSISTANT:"`` (text-only: ``"USER: {text} ASSISTANT:"``). The processor is a ``LlavaProcessor`` around a
``CLIPImageProcessor`` (48 px, patch 8 → 36 image tokens, CLS dropped by the "default" strategy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from moras_interp.moras.prompts import ADASHIELD_S_PROMPT, CONTEXT_PROMPT, ECSO_CAPTION_PROMPT, SAFETY_PROMPT
from moras_interp.organisms.tasks import DESCRIBE_PROMPT, IMAGE_REFS, REFUSAL, REQUESTS
from moras_interp.organisms.world import CLASSES, IMAGE_SIZE

SPECIALS = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
UNK, PAD, BOS, EOS, IMAGE = range(5)
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set texts = [message['content']] -%}{%- set n_img = 0 -%}"
    "{%- else -%}{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set n_img = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{ texts | join(' ') + ' ' }}"
    "{%- else -%}{{ message['role'].upper() + ': ' }}{{ '<image>\\n' * n_img }}{{ texts | join(' ') }}"
    "{%- if message['role'] == 'assistant' -%}{{ '</s>' }}{%- endif -%}{{ ' ' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


@dataclass
class OrganismConfig:
    """Sizes of the organism (defaults = the shipped ``toy-llava``)."""

    image_size: int = IMAGE_SIZE
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 384
    max_positions: int = 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pre_tokenizer() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.BertPreTokenizer()


def vocabulary() -> list[str]:
    """Every word the organism knows: specials first, then a sorted word list from all prompts/targets."""
    from moras_interp.organisms.world import caption

    corpus = [CONTEXT_PROMPT, SAFETY_PROMPT, ADASHIELD_S_PROMPT, ECSO_CAPTION_PROMPT, DESCRIBE_PROMPT, REFUSAL,
              "user : assistant : system", caption(list(CLASSES[:3])), *IMAGE_REFS]
    corpus += [q + " " + a for q, a in REQUESTS] + [f"a {c}" for c in CLASSES]
    pre = _pre_tokenizer()
    words = {w.lower() for text in corpus for w, _ in pre.pre_tokenize_str(text.replace("{x}", "").replace("{y}", ""))}
    return list(SPECIALS) + sorted(words - set(SPECIALS))


def build_tokenizer() -> Any:
    """The word-level fast tokenizer with ``<s>`` prepended, ``</s>`` as eos and the LLaVA-style chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = _pre_tokenizer()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", extra_special_tokens={"image_token": "<image>"},
                                  model_max_length=512, chat_template=CHAT_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    assert tok.convert_tokens_to_ids("<image>") == IMAGE and len(tok) == len(vocab)
    return tok


def build_processor(tokenizer: Any = None, cfg: OrganismConfig | None = None) -> Any:
    """``LlavaProcessor`` (CLIP image processor at ``cfg.image_size``, chat template) around the tokenizer."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    cfg = cfg or OrganismConfig()
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    ip = CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                            crop_size={"height": cfg.image_size, "width": cfg.image_size})
    return LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=cfg.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(vocab_size: int, cfg: OrganismConfig | None = None, attn_implementation: str = "sdpa") -> Any:
    """A randomly initialised ``LlavaForConditionalGeneration`` of the organism's shape."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    cfg = cfg or OrganismConfig()
    vc = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                          num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                          image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden)
    tc = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
                     num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                     num_key_value_heads=cfg.text_heads, max_position_embeddings=cfg.max_positions,
                     pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE, vision_feature_layer=-1,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False)
    config._attn_implementation = attn_implementation
    model = LlavaForConditionalGeneration(config)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = BOS, EOS, PAD
    gc.max_new_tokens, gc.do_sample = 48, False
    return model


def build_bpe_tokenizer(corpus: list[str], vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer (lower-cased) trained on ``corpus`` with the same specials (ids 0–4), ``<s>``
    prepended, ``</s>`` as eos and the same chat template: any English text tokenises (unknown words split into
    subwords / bytes). Deterministic for a given corpus and size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer=trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", extra_special_tokens={"image_token": "<image>"},
                                  model_max_length=512, chat_template=CHAT_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    if tok.convert_tokens_to_ids("<image>") != IMAGE or tok.convert_tokens_to_ids("</s>") != EOS:
        raise RuntimeError("BPE tokenizer: special tokens did not get ids 0–4.")
    return tok
