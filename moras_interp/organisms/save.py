"""Saving a trained organism: ``save_pretrained`` (safetensors) of model and processor, the pinned attention
backend and chat template, the organism's unsafe-prototype prompt file and ``train_info.json``.

Used by :func:`moras_interp.organisms.train.train` (and re-exported there as ``train.save``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from moras_interp.atomic import atomic_write_text
from moras_interp.moras.prototype import PROMPTS_FILE
from moras_interp.organisms.build import CHAT_TEMPLATE
from moras_interp.organisms.tasks import toy_harmful_requests
from moras_interp.readers import read_json


def save(model: Any, processor: Any, out_dir: str | Path, result: Any = None,
         prompts: list[str] | None = None) -> Path:
    """``save_pretrained`` (safetensors) of model and processor, ``"attn_implementation": "eager"`` pinned in
    config.json (``from_pretrained(..., attn_implementation="sdpa")`` still overrides it), plus ``train_info.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config._attn_implementation = "eager"
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    pin_files(out)
    write_prompt_set(out, prompts)
    if result is not None:
        info = asdict(result)
        info["losses"] = [round(x, 5) for x in info["losses"]]
        info["vision_losses"] = [round(x, 5) for x in info["vision_losses"]]
        atomic_write_text(out / "train_info.json", json.dumps(info, indent=1))
    return out


PROMPT_SET_HEADER = ("# Text-only harmful requests in the toy organism's vocabulary (10 phrasings x 5 hazards), for its MoRAS\n"
                     "# unsafe prototype; generated from moras_interp.organisms.tasks.toy_harmful_requests(). One per line.\n")


def write_prompt_set(out: str | Path, prompts: list[str] | None = None) -> Path:
    """Write the organism's unsafe-prototype prompts (:func:`tasks.toy_harmful_requests`) into its folder as
    ``harmful_requests.txt`` (:data:`moras_interp.moras.prototype.PROMPTS_FILE`), where
    ``UnsafePrototype.build(model)`` looks first, so a trained or copied organism keeps its own prompt set."""
    head = PROMPT_SET_HEADER if prompts is None else "# Text-only harmful requests for the organism's MoRAS unsafe prototype. One per line.\n"
    return atomic_write_text(Path(out) / PROMPTS_FILE, head + "\n".join(prompts or toy_harmful_requests()) + "\n")


def pin_files(out: Path) -> None:
    """Post-processing of a saved directory: ``"attn_implementation": "eager"`` in config.json (transformers
    does not serialise the attention backend) and the chat template also inside tokenizer_config.json."""
    cfg_path, tok_path = out / "config.json", out / "tokenizer_config.json"
    cfg = read_json(cfg_path)
    cfg["attn_implementation"] = "eager"
    atomic_write_text(cfg_path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok = read_json(tok_path)
    tok["chat_template"] = CHAT_TEMPLATE
    atomic_write_text(tok_path, json.dumps(tok, indent=2) + "\n")
    (out / "model.safetensors").chmod(0o644)


__all__ = ["PROMPT_SET_HEADER", "pin_files", "save", "write_prompt_set"]
