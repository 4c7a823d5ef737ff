"""The model card: `README.md` in a model folder, saying what the model is, what it was trained on and how well
it did, what it is for and what it is not (issue 15; the habit of Hugging Face model cards).

Training writes it beside the weights, so the card travels with the folder into DVC, the MLflow registry and any
copy a user makes. Its facts come from the folder's own `relightful.json` and from the training job (data version,
profile, loss history); held-out figures do not exist yet when it is written, so evaluation records them on the
registered version (tags `eval.*` and the version's description).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relightful.io.atomic import atomic_write_text

CARD_FILE = "README.md"

STAGE_PURPOSE = {
    1: "lighting-aware diffusion on light-stage renders (background-conditioned)",
    2: "lighting representation alignment: the background features pulled towards those of the full HDR map",
    3: "photorealism fine-tuning of the UNet on pairs synthesised from natural portraits (lighting branch frozen)",
}

INTENDED_USE = (
    "Relighting a foreground portrait (with its alpha matte) to match the lighting of a new background photo, "
    "for compositing: `relightful harmonize`, `relightful serve`, or the registered MLflow model "
    "(`mlflow models serve -m models:/relightful-stage3@champion`).")

LIMITS = (
    "- Trained on synthetic light-stage subjects (analytic busts with a canonical face mesh) and on a few natural "
    "portraits; real light-stage captures have not been part of training unless your data version says so.",
    "- It changes shading and colour at the model's resolution (carried to the input's as a smooth gain); it does "
    "not move hard cast shadows beyond that resolution, change geometry, or remove the source's specular highlights.",
    "- The `tiny` profile is a CPU demonstration at 64 px; its figures are not those of the paper's recipe.",
    "- Not for identifying people or inferring their attributes; outputs are edited images and should be labelled "
    "as such where that matters.",
)


@dataclass(frozen=True)
class CardFacts:
    """What the training job knows and the folder does not: where the model came from and how training went."""
    stage: int
    profile: str | None
    pairs: str
    data_version: str | None
    init_from: str | None
    history: Sequence[Mapping[str, float]] = field(default_factory=tuple)


def _figures(row: Mapping[str, float]) -> str:
    """The losses of a history row: no timings (samples/s), so that the same training writes the same card."""
    return ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                     if "loss" in k and isinstance(v, (int, float)) and not isinstance(v, bool))


def model_card(meta: Mapping, facts: CardFacts) -> str:
    """The card's Markdown text for a folder whose `relightful.json` holds `meta`."""
    config = meta.get("config", {})
    train = meta.get("train_config", {})
    last = dict(facts.history[-1]) if facts.history else {}
    codec = config.get("codec", {})
    lines = [
        f"# relightful stage {facts.stage}",
        "",
        f"A *Relightful Harmonization* model (CVPR 2024): stage {facts.stage}, "
        f"{STAGE_PURPOSE.get(facts.stage, 'unknown stage')}.",
        "",
        "## Training",
        f"- Profile: `{facts.profile or 'default'}`; {meta.get('steps', '?')} steps, micro-batch "
        f"{train.get('deepspeed', {}).get('micro_batch', '?')}, learning rate {train.get('optim', {}).get('lr', '?')}.",
        f"- Data: `{facts.pairs}`, data version `{facts.data_version or 'unknown'}`.",
        f"- Initialised from: `{facts.init_from or 'scratch'}`.",
        f"- Model: {config.get('image_size', '?')} px squares, codec `{codec.get('kind', '?')}` "
        f"(factor {codec.get('factor', '?')}), edit `{config.get('edit', '?')}`.",
        f"- Last logged step {last.get('step', '?')}: {_figures(last) or 'no losses logged'}.",
        "",
        "## Evaluation",
        "Held-out figures are measured by `relightful evaluate` (DESIGN 3.9) after training and recorded on the "
        "registered MLflow version: tags `eval.fg_psnr`, `eval.fg_ssim`, `eval.quality_bar` and its description.",
        "",
        "## Intended use",
        INTENDED_USE,
        "",
        "## Limits",
        *LIMITS,
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str | Path, facts: CardFacts) -> Path:
    """Write `README.md` into the model folder `folder` (atomically); returns its path."""
    from relightful.models.relight_model import read_model_meta

    path = Path(folder) / CARD_FILE
    atomic_write_text(path, model_card(read_model_meta(folder), facts))
    return path


def card_summary(folder: str | Path) -> str:
    """The card up to its evaluation section (what the model is and how it was trained), for the registered
    version's description; "" when the folder has no card."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return ""
    return path.read_text(encoding="utf-8").split("\n## Evaluation")[0].strip()


__all__ = ["CARD_FILE", "CardFacts", "card_summary", "model_card", "write_model_card"]
