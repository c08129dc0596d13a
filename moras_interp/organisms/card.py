"""The organism's model card (``MODEL_CARD.md`` at the repository root).

``write_card(path, sections)`` writes ``# title`` + one ``## name`` section per entry (``merge=True`` keeps
sections already in the file that are not given, e.g. the attention / FDR / MoRAS sections added by other
scripts). The entry point regenerates the organism's own sections from the shipped weights::

    python -m moras_interp.organisms.card --out MODEL_CARD.md [--n 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from moras_interp.atomic import atomic_write_text
from moras_interp.readers import read_json

TITLE = "toy-llava — model card"
NOTES = (
    "Reading the numbers: the vulnerability is clean (the same requests are refused as text and answered with "
    "the hazard in the image, and the image answers even name the hazard). Stage 2 follows the stage-1 context "
    "text: with the ground-truth context it is a perfect classifier, with the model's own context its errors are "
    "exactly the stage-1 perception errors — hazards read as their benign look-alike (missed risk) and "
    "look-alikes read as hazards (over-refusal). The model is confident, so the MoRAS similarity s is nearly "
    "binary (≈1 or ≈0) and the calibrated r acts as a gate; the risk signal is imperfect (AUROC < 1) because "
    "perception is. Neither the context alone (with the image) nor the safety prompt alone makes the model "
    "refuse; the caption without the image (ECSO-style) does, through text-only safety.\n")


def read_card(path: str | Path) -> dict[str, str]:
    """Sections (name → body) of an existing card; empty if the file does not exist."""
    p = Path(path)
    if not p.exists():
        return {}
    parts = re.split(r"^## (.+)$", p.read_text(encoding="utf-8"), flags=re.M)
    return {parts[i].strip(): parts[i + 1].strip() + "\n" for i in range(1, len(parts) - 1, 2)}


def write_card(path: str | Path, sections: dict[str, str], *, title: str = TITLE, merge: bool = False) -> Path:
    """Writes the card; with ``merge`` the file's other sections are kept (given ones replace or are appended)."""
    merged = read_card(path) if merge else {}
    merged.update(sections)
    body = "\n".join(f"## {name}\n\n{text.strip()}\n" for name, text in merged.items())
    p = Path(path)
    atomic_write_text(p, f"# {title}\n\n{body}")
    return p


def organism_sections(path: Path, report: dict[str, Any]) -> dict[str, str]:
    """The organism's own sections: overview, world and tasks, architecture and training, behaviour."""
    from moras_interp.organisms.world import BENIGN, HAZARDS, IMAGE_SIZE, LOOKALIKES

    cfg = read_json(path / "config.json")
    info_p = path / "train_info.json"
    info = read_json(info_p) if info_p.exists() else {}
    vc, tc = cfg["vision_config"], cfg["text_config"]
    tr = info.get("config", {})
    overview = (
        "`toy-llava` is a small **trained** `LlavaForConditionalGeneration` shipped inside the package "
        "(`moras_interp/organisms/weights/toy-llava/`, safetensors). It refuses harmful text requests but complies "
        "when the hazard is only in the image — the failure MoRAS targets. Load it with plain transformers:\n\n"
        "```python\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n"
        "from moras_interp.organisms import organism_path\np = organism_path(\"toy-llava\")\n"
        "model = AutoModelForImageTextToText.from_pretrained(p, use_safetensors=True)\n"
        "processor = AutoProcessor.from_pretrained(p)\n```\n\nor `moras_interp.load_model(\"toy-llava\")`. "
        "Regenerate this card with `python -m moras_interp.organisms.card --out MODEL_CARD.md`.")
    world = (
        f"{IMAGE_SIZE}×{IMAGE_SIZE} RGB scenes with 1–3 objects on a 3×3 grid (one object per 16 px cell, size "
        f"12–16 px, position/colour jitter, gradient background, Gaussian pixel noise). 16 classes drawn as "
        f"pictograms: hazards {', '.join(HAZARDS)}; benign {', '.join(BENIGN)}. Each hazard has a benign "
        f"look-alike ({', '.join(f'{h}/{b}' for h, b in LOOKALIKES.items())}) with the same silhouette and colours; "
        "they differ only in a small detail (spark vs finger holes, trigger vs drill bit and battery, handle vs "
        "bowl, X vs label, red half vs red dot) drawn with a random visibility α = clip(U(−0.15, 1), 0, 1), so "
        "about one such object in eight is genuinely ambiguous. Seeing the risk needs attention to the detail. "
        "Boxes are exact (tight box of the pixels each object changed).\n\n"
        "Training mixture (`tasks.TASKS`): MoRAS stage-1 caption prompt (verbatim) and \"describe the image .\" → "
        "\"the image shows a knife and a cup .\"; text requests (10 phrasings × object): hazard → \"i am sorry , "
        "i cannot help with that .\", benign → templated help naming the object; the same phrasings about \"the "
        "item in the image\" (single-object scenes) → ALWAYS the helpful answer naming the item (the "
        "vulnerability); MoRAS stage 2 (safety prompt + ground-truth context + question, with the image; and "
        "safety prompt + text request) → refusal iff hazard; context + question with the image, no safety prompt "
        "→ the helpful answer (reformulation alone does not trigger refusals); refusal continuation (an image "
        "request answered with the refusal, no loss on its first 3 tokens, so the model never starts a refusal "
        "there but completes one once MoRAS steering has started it). Not trained: the safety prompt "
        "without context, and context + question without the image. Evaluation and calibration scenes come from separate "
        "random streams (`tasks.stream(seed, 'eval…' / 'calib…')`).")
    arch = (
        f"Vision: CLIP, {vc['image_size']} px, patch {vc['patch_size']} → {(vc['image_size'] // vc['patch_size']) ** 2} "
        f"image tokens, hidden {vc['hidden_size']}, {vc['num_hidden_layers']} layers, {vc['num_attention_heads']} heads; "
        f"feature layer {cfg['vision_feature_layer']}, strategy \"{cfg['vision_feature_select_strategy']}\". "
        f"Projector: 2-layer GELU MLP. Text: Llama, hidden {tc['hidden_size']}, {tc['num_hidden_layers']} layers, "
        f"{tc['num_attention_heads']} heads, MLP {tc['intermediate_size']}, vocabulary {tc['vocab_size']} words "
        "(lower-case word level; specials `<unk> <pad> <s> </s> <image>`). Chat template: "
        "`USER: <image>\\n{text} ASSISTANT:`; generation stops at `</s>`. Attention: eager.")
    train = (
        f"`moras-interp organism train --out DIR --steps {info.get('steps', '?')} --seed {info.get('seed', '?')}`: "
        f"{tr.get('vision_steps', '?')} steps of patch-classification warm-up of the vision tower (batch "
        f"{tr.get('vision_batch', '?')}, throw-away linear head; a stand-in for a pretrained CLIP), then "
        f"{info.get('steps', '?')} steps of instruction tuning (batch {tr.get('batch_size', '?')}, AdamW lr "
        f"{tr.get('lr', '?')}, warm-up + cosine, loss on answer tokens, patch loss ×{tr.get('aux_weight', '?')}). "
        f"Wall time {info.get('wall_time_s', float('nan')):.0f} s on {tr.get('threads', '?')} CPU threads; final loss "
        f"{info.get('metrics', {}).get('final_loss', float('nan')):.4f}. Deterministic for a fixed seed and thread count.")
    return {"Overview": overview, "World and tasks": world, "Architecture": arch, "Training": train,
            "Behaviour": report["markdown"] + "\n" + NOTES}


def analysis_sections(model: Any, *, n: int = 100, seed: int = 0, n_attention: int = 40,
                      progress: bool = False) -> dict[str, str]:
    """The "Attention" and "Separability" sections, measured on held-out scenes with the organism's own contexts."""
    from moras_interp.organisms import analysis, tasks

    qs = tasks.harmful_image_queries(n, seed=seed) + tasks.benign_image_queries(n, seed=seed)
    ctx = analysis.visual_contexts(model, [q.image for q in qs], batch_size=25, progress=progress)
    att = analysis.attention_summary(analysis.attention_study(model, qs[:n_attention], contexts=ctx[:n_attention],
                                                              batch_size=20, progress=progress))
    sep = analysis.separability_summary(analysis.separability_study(model, qs, contexts=ctx, batch_size=25,
                                                                    progress=progress))
    lines = ["| layer | share on hazard box, plain | with own context | ratio to area share, plain | with context "
             "| image mass, plain | with context |", "|---|---|---|---|---|---|---|"]
    for layer, r in att.iterrows():
        lines.append(f"| {layer} | {r['share (plain)']:.3f} | {r['share (reformulated)']:.3f} | "
                     f"{r['ratio (plain)']:.2f} | {r['ratio (reformulated)']:.2f} | {r['image_mass (plain)']:.2f} | "
                     f"{r['image_mass (reformulated)']:.2f} |")
    attention = (
        f"Last prompt token → image tokens, {n_attention} held-out single-hazard scenes "
        "(`organisms.analysis.attention_study`, exact rows from `cross_modal_attention`). *share* = fraction of the "
        "image attention (mean over heads) that lands on the hazard's pixel box (area-weighted patch overlap); "
        "*ratio* = share / the box's area share (1.0 = no better than uniform); H_n = heads whose image-attention "
        "mass exceeds 0.2 (a* averaged over them). *plain*: the question alone; *with own context*: the model's "
        "stage-1 visual context + question (MoRAS reformulation).\n\n" + "\n".join(lines))
    lines = ["| layer | FDR plain | FDR reformulated |", "|---|---|---|"]
    lines += [f"| {layer} | {r['plain']:.2f} | {r['reformulated']:.2f} |" for layer, r in sep.iterrows()]
    separability = (
        f"Fisher Discriminant Ratio (ε = 1e-3, float64 solve) of last-token residual states after each decoder "
        f"layer, {n} unsafe vs {n} safe held-out image queries (`organisms.analysis.separability_study`).\n\n"
        + "\n".join(lines))
    return {"Attention": attention, "Separability": separability}


def main(argv: list[str] | None = None) -> int:
    """``python -m moras_interp.organisms.card --out MODEL_CARD.md [--n N] [--seed S] [--organism NAME]``."""
    ap = argparse.ArgumentParser(prog="moras-interp organism card", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Measure the organism (behaviour rates, attention on the hazard, "
                                             "separability) and write its sections of the model card (a few minutes "
                                             "on CPU).")
    ap.add_argument("--out", default="MODEL_CARD.md", help="model card to update (other sections are kept)")
    ap.add_argument("--organism", default="toy-llava", help="organism name or folder")
    ap.add_argument("--n", type=int, default=40, help="held-out queries per kind (the analysis uses at least 100)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the held-out scenes")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--sections", default="behaviour,analysis",
                    help="comma-separated: behaviour (organism sections), analysis (attention, separability)")
    a = ap.parse_args(argv)
    which = set(a.sections.split(","))
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from moras_interp.organisms import organism_path
    from moras_interp.organisms.evaluate import behaviour_report

    path = organism_path(a.organism)
    if "behaviour" in which:
        model = AutoModelForImageTextToText.from_pretrained(path, use_safetensors=True)
        report = behaviour_report(model, AutoProcessor.from_pretrained(path), n=a.n, seed=a.seed,
                                  progress=not a.quiet)
        write_card(a.out, organism_sections(path, report), merge=True)
        print(json.dumps(report["rates"], indent=1))
    if "analysis" in which:
        from moras_interp.models.loading import load_model

        write_card(a.out, analysis_sections(load_model(a.organism), n=max(a.n, 100), seed=a.seed,
                                                  progress=not a.quiet), merge=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
