"""Training the toy-llava organism from scratch on the synthetic world (CPU, minutes).

Two phases, both deterministic from ``seed`` (``torch.manual_seed`` + a numpy stream; deterministic
algorithms on; results are bit-identical for a fixed seed AND thread count — pass ``threads=1`` for
machine-independent single-threaded runs):

1. **vision warm-up** (stand-in for a pretrained CLIP): the vision tower alone plus a throw-away linear
   head learns to classify every 8×8 patch (which object, or background) from the scenes' boxes.
2. **instruction tuning**: the whole ``LlavaForConditionalGeneration`` on the task mixture of
   :mod:`moras_interp.organisms.tasks` (loss on answer tokens only, ``</s>`` included), with the patch loss
   kept as a small auxiliary term; AdamW, linear warm-up + cosine decay, examples of similar length grouped
   into micro-batches (gradient accumulation) to save padding. The auxiliary head is not saved.

CLI: ``moras-interp organism train --out DIR [--steps N] [--seed S]`` (= ``python -m
moras_interp.organisms.train``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from moras_interp.organisms.build import (
    IMAGE,
    OrganismConfig,
    build_bpe_tokenizer,
    build_model,
    build_processor,
    build_tokenizer,
)
from moras_interp.organisms.save import PROMPT_SET_HEADER, pin_files, save, write_prompt_set
from moras_interp.organisms.tasks import TrainingPair, stream, toy_harmful_requests, training_batch
from moras_interp.organisms.world import CLASSES, Scene, sample_scene
from moras_interp.progress import tqdm

MEAN = np.asarray((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)
STD = np.asarray((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)


@dataclass
class TrainResult:
    """What a training run did: per-step losses, wall time, final metrics and the output directory."""

    losses: list[float]
    vision_losses: list[float]
    wall_time_s: float
    steps: int
    seed: int
    metrics: dict[str, Any] = field(default_factory=dict)
    out_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def pixels(images: list[Image.Image]) -> torch.Tensor:
    """CLIP-normalised pixel values [n, 3, H, W] (equal to the processor's output for 48 px images)."""
    a = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    return torch.from_numpy(((a - MEAN) / STD).transpose(0, 3, 1, 2).copy())


def patch_labels(scenes: list[Scene], image_size: int, patch: int) -> torch.Tensor:
    """[n, g*g] class index + 1 of the object covering most of each patch (≥ 12 px²), 0 = background."""
    g = image_size // patch
    out = np.zeros((len(scenes), g, g), dtype=np.int64)
    edges = np.arange(g + 1) * patch
    for i, sc in enumerate(scenes):
        best = np.full((g, g), 11.0)
        for o in sc.objects:
            x0, y0, x1, y1 = o.box
            ox = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None)
            oy = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None)
            area = oy[:, None] * ox[None, :]
            win = area > best
            out[i][win] = CLASSES.index(o.name) + 1
            best = np.maximum(best, area)
    return torch.from_numpy(out.reshape(len(scenes), -1))


def encode(tokenizer: Any, ex: TrainingPair, n_image_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one example exactly as the processor + chat template would tokenise it."""
    content: list[dict[str, str]] = [{"type": "image"}] if ex.image is not None else []
    content.append({"type": "text", "text": ex.prompt})
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    ids: list[int] = []
    for t in tokenizer(text)["input_ids"]:
        ids.extend([t] * n_image_tokens if t == IMAGE else [t])
    ans = tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    k = ex.no_loss_prefix
    return ids + ans, [-100] * (len(ids) + k) + ans[k:]


def _collate(encs: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, ...]:
    n = max(len(i) for i, _ in encs)
    ids = torch.full((len(encs), n), pad, dtype=torch.long)
    lab = torch.full((len(encs), n), -100, dtype=torch.long)
    mask = torch.zeros((len(encs), n), dtype=torch.long)
    for b, (i, lb) in enumerate(encs):
        ids[b, : len(i)], lab[b, : len(lb)], mask[b, : len(i)] = torch.tensor(i), torch.tensor(lb), 1
    return ids, lab, mask


def _lr(step: int, total: int, warm: int, base: float, floor: float = 0.05) -> float:
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def recipe(name: str) -> tuple[Any, Callable[..., list[TrainingPair]], Callable[[Any], Scene], list[str]]:
    """(tokenizer, training-batch function, warm-up scene function, unsafe-prototype prompts) of an organism."""
    if name == "toy-llava":
        return build_tokenizer(), training_batch, lambda r: sample_scene(r, n_objects=(1, 3)), toy_harmful_requests()
    if name == "toy-llava-2":
        from moras_interp.organisms import toy2

        return (build_bpe_tokenizer(toy2.tokenizer_corpus()), toy2.training_batch, toy2.random_scene,
                toy2.harmful_requests())
    raise KeyError(f"Unknown organism recipe {name!r}; known: toy-llava, toy-llava-2.")


def train(out_dir: str | Path | None, *, steps: int = 800, seed: int = 0, batch_size: int = 48,
          lr: float = 3e-3, vision_steps: int = 300, vision_batch: int = 64, aux_weight: float = 0.3,
          micro_batches: int = 3, log_every: int = 50, progress: bool = True, threads: int | None = None,
          cfg: OrganismConfig | None = None, eval_n: int = 0,
          callback: Callable[[int, Any, Any], None] | None = None, organism: str = "toy-llava",
          label_smoothing: float = 0.0) -> TrainResult:
    """Trains the organism from scratch and (if ``out_dir``) saves model + processor there.

    Args:
        out_dir: where to save (``save_pretrained`` of model and processor, plus ``train_info.json``); None = don't.
        steps / batch_size / lr: instruction-tuning steps, examples per step, peak AdamW learning rate.
        vision_steps / vision_batch: patch-classification warm-up of the vision tower (0 skips it).
        aux_weight: weight of the patch loss during instruction tuning. micro_batches: length groups per step.
        threads: ``torch.set_num_threads`` (None keeps the current setting).
        eval_n: if > 0, run :func:`moras_interp.organisms.evaluate.behaviour_report` with this n at the end.
        callback: called as ``callback(step, model, processor)`` every ``log_every`` steps (e.g. quick evals).
        organism: the recipe (:func:`recipe`): world rules, tokenizer and prompt set. label_smoothing: of the
            answer-token loss (toy-llava-2 uses 0.1 so its confidence stays finite).
    """
    cfg = cfg or OrganismConfig()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = stream(seed, "train")
    tok, batch_fn, scene_fn, prompts = recipe(organism)
    proc = build_processor(tok, cfg)
    model = build_model(len(tok), cfg, attn_implementation="sdpa").train()
    g = cfg.image_size // cfg.patch_size
    head = torch.nn.Linear(cfg.vision_hidden, len(CLASSES) + 1)
    tower = model.model.vision_tower
    t0 = time.perf_counter()
    vlosses: list[float] = []
    if vision_steps:
        vopt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=2e-3, weight_decay=0.01)
        for step in tqdm(range(vision_steps), desc="vision warm-up", disable=not progress):
            scenes = [scene_fn(rng) for _ in range(vision_batch)]
            h = tower(pixels([s.image for s in scenes])).last_hidden_state[:, 1:]
            loss = torch.nn.functional.cross_entropy(head(h).flatten(0, 1),
                                                     patch_labels(scenes, cfg.image_size, cfg.patch_size).flatten())
            for p in vopt.param_groups:
                p["lr"] = _lr(step, vision_steps, max(1, vision_steps // 10), 2e-3)
            vopt.zero_grad(set_to_none=True)
            loss.backward()
            vopt.step()
            vlosses.append(float(loss.detach()))
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    captured: dict[str, torch.Tensor] = {}
    hook = tower.register_forward_hook(lambda m, a, o: captured.__setitem__("h", o.last_hidden_state))
    losses: list[float] = []
    bar = tqdm(range(steps), desc="instruction tuning", disable=not progress)
    for step in bar:
        exs = batch_fn(rng, batch_size, max_objects=2 if step < steps // 5 else 3)
        encs = [encode(tok, e, g * g) for e in exs]
        order = sorted(range(len(exs)), key=lambda i: len(encs[i][0]))
        n_tok = sum(sum(x != -100 for x in lb) for _, lb in encs)
        for p in opt.param_groups:
            p["lr"] = _lr(step, steps, max(1, steps // 20), lr)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in np.array_split(np.asarray(order), micro_batches):
            if len(chunk) == 0:
                continue
            ids, lab, mask = _collate([encs[i] for i in chunk], tok.pad_token_id)
            ims = [exs[i] for i in chunk if exs[i].image is not None]
            pv = pixels([e.image for e in ims]) if ims else None  # type: ignore[misc]
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=pv).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), lab[:, 1:].flatten(),
                                                     ignore_index=-100, reduction="sum",
                                                     label_smoothing=label_smoothing) / n_tok
            total += float(loss.detach())
            if ims and aux_weight:
                sc_lab = torch.stack([_scene_patch_labels(e, cfg) for e in ims])
                aux = torch.nn.functional.cross_entropy(head(captured["h"][:, 1:]).flatten(0, 1), sc_lab.flatten())
                loss = loss + aux_weight * aux * len(ims) / batch_size
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(total)
        if log_every and (step + 1) % log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.4f}")
            if not progress:
                print(f"step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if callback is not None:
                model.eval()
                callback(step + 1, model, proc)
                model.train()
    hook.remove()
    wall = time.perf_counter() - t0
    model.eval()
    model.config._attn_implementation = "eager"
    metrics: dict[str, Any] = {"final_loss": float(np.mean(losses[-max(1, min(50, steps // 5)):])) if losses else None}
    if eval_n and organism == "toy-llava":
        from moras_interp.organisms.evaluate import behaviour_report

        metrics.update(behaviour_report(model, proc, n=eval_n, seed=seed)["rates"])
    result = TrainResult(losses, vlosses, wall, steps, seed, metrics, str(out_dir) if out_dir else None,
                         {"organism": cfg.to_dict(), "batch_size": batch_size, "lr": lr, "vision_steps": vision_steps,
                          "vision_batch": vision_batch, "aux_weight": aux_weight, "micro_batches": micro_batches,
                          "threads": torch.get_num_threads(), "vocab_size": len(tok), "recipe": organism,
                          "label_smoothing": label_smoothing})
    if out_dir is not None:
        save(model, proc, out_dir, result, prompts=prompts)
    return result


def _scene_patch_labels(ex: TrainingPair, cfg: OrganismConfig) -> torch.Tensor:
    sc = getattr(ex, "scene", None)
    if sc is None:
        raise ValueError("training examples with images must carry their scene")
    return patch_labels([sc], cfg.image_size, cfg.patch_size)[0]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``moras-interp organism train --out DIR [--steps N] [--seed S] [--threads T] [--eval-n N]``."""
    p = argparse.ArgumentParser(prog="moras-interp organism train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (model + processor, loadable with from_pretrained)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--vision-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--eval-n", type=int, default=40, help="held-out examples per behaviour check (0 = skip)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--organism", default="toy-llava", help="recipe: toy-llava or toy-llava-2")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    a = p.parse_args(argv)
    r = train(a.out, steps=a.steps, seed=a.seed, batch_size=a.batch_size, vision_steps=a.vision_steps,
              threads=a.threads, eval_n=a.eval_n, progress=not a.quiet, organism=a.organism,
              label_smoothing=a.label_smoothing)
    print(json.dumps({"wall_time_s": round(r.wall_time_s, 1), **r.metrics}, indent=1))
    return 0


__all__ = ["PROMPT_SET_HEADER", "TrainResult", "encode", "patch_labels", "pin_files", "pixels", "recipe", "save",
           "train", "write_prompt_set"]

if __name__ == "__main__":
    raise SystemExit(main())
