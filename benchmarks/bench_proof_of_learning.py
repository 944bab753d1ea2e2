"""Proof of learning on real tissue: embed a planted cohort, train the ViT, check it found it.

A cohort from :func:`benchmarks.make_cohort.make_cohort` (positive slides carry a few blobs of
one real tissue that negatives lack) is embedded by the inference engine with a fixed
random-init backbone (no weights can be had offline), the ViT aggregator is cross-validated on
the slide labels alone (``wsi_ai.train.train_run``, 5 folds), and the saved model predicts
every positive slide (``predict_store``). Reported against the targets:

- pooled out-of-fold slide AUC (``metrics.json``), target >= 0.9;
- localisation AUC: each patch's relative attention (attention x patches in the slide, so
  slides of different sizes compare) against "planted" (the centre's mask pixel is planted),
  pooled over the patches of all positive slides, target >= 0.8; also over the held-out
  fold of the saved model only;
- checks that nothing else gives the label away: the AUC of the patch count per slide
  (should be near 0.5) and the planted share of each positive slide's patches (<= 10 %).

Reference measured in the same run: the gated-attention ABMIL baseline trained on the same
features, with its OOF AUC and the ViT/ABMIL training-time ratio.

The default backbone is the ``resnet18`` card with random weights; ``--model`` takes any
card name or path (always run with ``random_init``).

The CI-scale run is ``tests/test_proof_of_learning.py`` (80 slides of ~3,000 px); the full
scale is the default here (80 slides of ~6,000 px, about four times the patches):

    python benchmarks/bench_proof_of_learning.py OUT [--slides 80 --size 6000] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.make_cohort import Cohort, make_cohort
from benchmarks.make_slide import MASK_DOWNSAMPLE as DS
from wsi_ai.errors import WsiAiError
from wsi_ai.nn.predict import load_run, predict_store
from wsi_ai.store import read_features
from wsi_ai.train import TrainConfig, train_run

TARGET_OOF_AUC = 0.9
TARGET_LOCALISATION_AUC = 0.8
VIT = {"width": 64, "depth": 1, "heads": 1, "dropout": 0.0}


def train_config(
    aggregator: str = "vit", seed: int = 0, device: str = "cpu", epochs: int = 30
) -> TrainConfig:
    """The settings used here: 5 folds, lr 3e-4, no early stop before ``epochs`` (patience =
    epochs; the weights of the best validation epoch); the ViT small (width 64, one block,
    one head, no dropout). One head, because the read-out averages the class token's
    attention over heads: with 4 heads on this cohort one head localised the planted tissue
    at AUC 0.97 and the other three were near chance, so the mean scored 0.81."""
    return TrainConfig(
        aggregator=aggregator, hyperparameters=VIT if aggregator == "vit" else {}, folds=5,
        seed=seed, max_epochs=epochs, patience=epochs, lr=3e-4, device=device,
    )  # fmt: skip


def planted_patches(coords: NDArray[np.int64], mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Per patch (level-0 ``x, y, width, height``): is its centre's mask pixel planted?"""
    cx = (coords[:, 0] + coords[:, 2] // 2) // DS
    cy = (coords[:, 1] + coords[:, 3] // 2) // DS
    inside = (cy < mask.shape[0]) & (cx < mask.shape[1])
    out = np.zeros(len(coords), dtype=bool)
    out[inside] = mask[cy[inside], cx[inside]]
    return out


@dataclass(frozen=True)
class Proof:
    """What a proof-of-learning run measured (AUCs in [0, 1])."""

    oof_auc: float
    localisation_auc: float  # relative attention vs planted, all positive slides pooled
    localisation_auc_held_out: float | None  # the saved model's held-out fold only
    localisation_auc_per_slide: float  # mean over positive slides
    patch_count_auc: float  # the label from the number of patches alone (~0.5 wanted)
    planted_share: tuple[float, float]  # min, max planted share of a positive slide
    n_patches: int
    metrics: dict[str, Any]

    def passed(self) -> bool:
        return self.oof_auc >= TARGET_OOF_AUC and self.localisation_auc >= TARGET_LOCALISATION_AUC

    def summary(self) -> str:
        held = self.localisation_auc_held_out
        return (
            f"pooled OOF AUC {self.oof_auc:.3f} (target {TARGET_OOF_AUC}); localisation AUC "
            f"{self.localisation_auc:.3f} (target {TARGET_LOCALISATION_AUC}; held-out fold "
            f"{'n/a' if held is None else f'{held:.3f}'}, per-slide mean "
            f"{self.localisation_auc_per_slide:.3f}); patch-count AUC "
            f"{self.patch_count_auc:.3f}; planted share {self.planted_share[0]:.1%}-"
            f"{self.planted_share[1]:.1%} of {self.n_patches} patches in all"
        )


def evaluate(cohort: Cohort, features: Path, rundir: Path, predictions: Path) -> Proof:
    """Predict every positive slide with the run and score slide AUC and localisation."""
    metrics = json.loads((rundir / "metrics.json").read_text(encoding="utf-8"))
    oof = pd.read_csv(rundir / "oof_predictions.csv")
    held = set(oof.loc[oof["fold"] == metrics.get("final_fold"), "slide"].astype(str))
    run = load_run(rundir, device="cpu")
    counts, labels = [], []
    scores, truth, in_held, per_slide, shares = [], [], [], [], []
    for s in cohort.slides:
        store = features / f"{s.name}.zarr"
        coords = read_features(store, with_embeddings=False).coords
        counts.append(len(coords))
        labels.append(s.label == "positive")
        if s.label != "positive":
            continue
        predict_store(run, store, predictions, overwrite=True)
        table = pd.read_csv(predictions / f"{s.name}.patch_scores.csv")
        planted = planted_patches(
            table[["x", "y", "width", "height"]].to_numpy(), cohort.planted_mask(s.name)
        )
        relative = table["attention"].to_numpy() * len(table)
        scores.append(relative)
        truth.append(planted)
        in_held.append(np.full(len(table), s.name in held))
        shares.append(float(planted.mean()))
        if 0 < planted.sum() < len(planted):
            per_slide.append(float(roc_auc_score(planted, relative)))
    score, true, hold = np.concatenate(scores), np.concatenate(truth), np.concatenate(in_held)
    held_auc = (
        float(roc_auc_score(true[hold], score[hold])) if 0 < true[hold].sum() < hold.sum() else None
    )
    return Proof(
        oof_auc=float(metrics["oof"]["auc"]),
        localisation_auc=float(roc_auc_score(true, score)),
        localisation_auc_held_out=held_auc,
        localisation_auc_per_slide=float(np.mean(per_slide)) if per_slide else float("nan"),
        patch_count_auc=float(roc_auc_score(labels, counts)),
        planted_share=(min(shares), max(shares)),
        n_patches=int(sum(counts)),
        metrics=metrics,
    )


@dataclass(frozen=True)
class ProofRun:
    """A whole run: the cohort, the ViT's proof, the reference and the stage times (s)."""

    cohort: Cohort
    proof: Proof
    patches: int
    reference_auc: dict[str, float]  # pooled OOF AUC per aggregator trained
    times: dict[str, float]


def run_proof(
    out: Path,
    *,
    slides: int = 80,
    size: int = 3000,
    model: str = "resnet18",
    mpp: float = 0.5,
    patch: int = 112,
    epochs: int = 30,
    device: str = "cpu",
    seed: int = 0,
    reference: bool = True,
) -> ProofRun:
    """Cohort -> engine embeddings -> 5-fold ViT (and, with ``reference``, ABMIL) -> proof.

    ``out`` is replaced. Raises :class:`~wsi_ai.errors.WsiAiError` when a slide fails to embed.
    """
    from wsi_ai.engine import EngineConfig, run_slides  # torch and Dask: only when run

    if out.exists():
        shutil.rmtree(out)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    patch_px = round(patch * mpp / 0.5)  # level-0 px of a patch on the 0.5 µm/px cohort
    cohort = make_cohort(out / "cohort", slides, size, seed=seed, patch_px=patch_px)
    times["cohort"] = time.perf_counter() - t0
    config = EngineConfig(
        model=model, random_init=True, device=device, mpp=mpp, size=patch,
        tissue=True, min_tissue=0.5, outputs=("embeddings",),
    )  # fmt: skip
    t0 = time.perf_counter()
    results = run_slides([s.path for s in cohort.slides], out / "features", config, overwrite=True)
    times["embed"] = time.perf_counter() - t0
    failed = [r for r in results if not r.ok]
    if failed:
        raise WsiAiError(f"{failed[0].slide}: {failed[0].error}")
    auc: dict[str, float] = {}
    for name in ("abmil", "vit") if reference else ("vit",):
        cfg = train_config(name, seed, device, epochs)
        t0 = time.perf_counter()
        m = train_run(cohort.labels_csv, out / "features", out / f"run-{name}", cfg, overwrite=True)
        times[f"train_{name}"] = time.perf_counter() - t0
        auc[name] = float(m["oof"]["auc"])
    t0 = time.perf_counter()
    proof = evaluate(cohort, out / "features", out / "run-vit", out / "predictions")
    times["predict"] = time.perf_counter() - t0
    return ProofRun(cohort, proof, sum(r.patches for r in results), auc, times)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="work folder (cohort, features, runs); replaced")
    p.add_argument("--slides", type=int, default=80)
    p.add_argument("--size", type=int, default=6000, help="nominal slide side, level-0 px")
    p.add_argument("--model", default="resnet18", help="card name or path (random weights)")
    p.add_argument("--mpp", type=float, default=0.5, help="patch resolution, µm/px")
    p.add_argument("--patch", type=int, default=112, help="patch side, px")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--device", default="cpu", help="embedding and training device")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        run = run_proof(
            args.out, slides=args.slides, size=args.size, model=args.model, mpp=args.mpp,
            patch=args.patch, epochs=args.epochs, device=args.device, seed=args.seed,
        )  # fmt: skip
    except WsiAiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    times, proof = run.times, run.proof
    print(
        f"{len(run.cohort.slides)} slides of ~{args.size} px, {run.patches} patches of "
        f"{args.patch} px at {args.mpp} µm/px, backbone {Path(args.model).stem} "
        "(random init)"
    )
    print(f"ViT: {proof.summary()}")
    print(
        f"reference ABMIL pooled OOF AUC {run.reference_auc['abmil']:.3f} (ViT/ABMIL "
        f"{proof.oof_auc / run.reference_auc['abmil']:.2f}); training time ViT/ABMIL "
        f"{times['train_vit'] / times['train_abmil']:.2f}x"
    )
    print(
        "times: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
        + f"; embedding {1000 * times['embed'] / max(run.patches, 1):.2f} ms/patch"
    )  # fmt: skip
    print("PASS" if proof.passed() else "BELOW TARGET")
    return 0 if proof.passed() else 2


if __name__ == "__main__":
    sys.exit(main())
