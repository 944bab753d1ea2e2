"""Proof of learning on real tissue, at CI scale (issue 4, item 5).

80 synthetic slides mosaicked from the shared real H&E; the 40 positive ones carry a few
planted regions of the TCGA squamous carcinoma (at most 10% of their patches) that the
negatives lack. A fixed random-init ResNet-18 embeds them through the inference engine, the
ViT aggregator is cross-validated on slide labels only, and its attention read-out must find
the planted tissue. Every step is seeded, so a CPU run repeats exactly. About two minutes on
two cores; ``benchmarks/bench_proof_of_learning.py`` runs the full scale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.bench_proof_of_learning import (
    TARGET_LOCALISATION_AUC,
    TARGET_OOF_AUC,
    ProofRun,
    run_proof,
)
from benchmarks.synth_sources import DEFAULT_SOURCES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proof_run(shared: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> ProofRun:
    for rel in DEFAULT_SOURCES:  # the cohort is made of these; without them it would differ
        shared(rel)
    out = tmp_path_factory.mktemp("proof") / "run"
    return run_proof(out, slides=80, size=3000, reference=False)


def test_vit_classifies_held_out_slides_by_the_planted_tissue(proof_run: ProofRun) -> None:
    proof = proof_run.proof
    assert proof.oof_auc >= TARGET_OOF_AUC, proof.summary()
    metrics = proof.metrics
    assert metrics["n_slides"] == 80 and len(metrics["folds"]) == 5


def test_vit_attention_localises_the_planted_regions(proof_run: ProofRun) -> None:
    proof = proof_run.proof
    assert proof.localisation_auc >= TARGET_LOCALISATION_AUC, proof.summary()
    # not only on slides the saved model was trained on
    held = proof.localisation_auc_held_out
    assert held is not None and held >= TARGET_LOCALISATION_AUC, proof.summary()


def test_nothing_but_the_planted_tissue_tells_the_classes_apart(proof_run: ProofRun) -> None:
    proof = proof_run.proof
    low, high = proof.planted_share
    assert low > 0 and high <= 0.10, proof.summary()  # at most 10% of a positive's patches
    assert 0.3 <= proof.patch_count_auc <= 0.7, proof.summary()  # slide size says nothing
    labels = [s.label for s in proof_run.cohort.slides]
    assert labels.count("positive") == labels.count("negative") == 40
