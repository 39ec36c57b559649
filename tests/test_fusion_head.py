"""The fusion head: votes masked by what each modality observes, semantic consistency, folded thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusion_node.vocabulary import CLASSES, MODALITIES, OBSERVES  # noqa: E402
from models.architectures import FusionHead  # noqa: E402

D = 8


def _head_with_logits(per_modality: dict[str, dict[str, float]]) -> FusionHead:
    """A head whose classifiers ignore the embedding and output fixed logits per modality."""
    head = FusionHead(D, len(CLASSES))
    with torch.no_grad():
        for k, m in enumerate(MODALITIES):
            head.classifiers[k].weight.zero_()
            head.classifiers[k].bias.copy_(torch.tensor([per_modality.get(m, {}).get(c, -6.0) for c in CLASSES]))
    return head.eval()


@torch.no_grad()
def _run(head: FusionHead, present: list[float]):
    e = torch.nn.functional.normalize(torch.ones(1, D), dim=1)
    logits, certainty, weights, consistency = head(e, e, e, torch.tensor([present]))
    return torch.sigmoid(logits)[0], certainty[0], weights[0], float(consistency)


def test_a_modality_votes_only_for_what_it_can_observe():
    # Every classifier shouts every class; only the observable ones get through.
    head = _head_with_logits({m: {c: 8.0 for c in CLASSES} for m in MODALITIES})
    for k, m in enumerate(MODALITIES):
        present = [1.0 if j == k else 0.0 for j in range(3)]
        probs, *_ = _run(head, present)
        for j, c in enumerate(CLASSES):
            if c in OBSERVES[m]:
                assert probs[j] > 0.99, (m, c)
            else:
                assert probs[j] < 1e-6, (m, c)  # a radar never reports speech, a camera never glass breaking


def test_the_surest_observer_decides_and_silence_is_no_evidence_of_absence():
    # People on camera, nobody heard walking: the person is there.
    head = _head_with_logits({"camera": {"person": 5.0}, "audio": {"person": -5.0, "speech": 4.0}})
    probs, certainty, weights, consistency = _run(head, [1.0, 0.0, 1.0])
    assert probs[CLASSES.index("person")] > 0.99 and probs[CLASSES.index("speech")] > 0.98
    assert consistency == pytest.approx(1.0)  # a microphone vouches for no absence
    assert certainty[1] == 0 and weights[1] == 0 and float(weights.sum()) == pytest.approx(1.0)


def test_witnesses_that_contradict_each_other_lower_consistency():
    agree = _head_with_logits({"camera": {"person": 4.0}, "radar": {"person": 4.0}})
    clash = _head_with_logits({"camera": {"person": -4.0}, "radar": {"person": 4.0}})
    assert _run(agree, [1, 1, 1])[3] > 0.99
    c = _run(clash, [1, 1, 1])[3]
    expected = 1.0 - abs(1 / (1 + math.exp(4.0)) - 1 / (1 + math.exp(-4.0)))
    assert c == pytest.approx(expected, abs=1e-5)
    # The same contradiction with the radar missing is no contradiction at all.
    assert _run(clash, [1, 0, 1])[3] == pytest.approx(1.0)


def test_folded_thresholds_make_each_modality_threshold_the_fused_half():
    head = FusionHead(D, len(CLASSES))
    e = torch.nn.functional.normalize(torch.randn(1, D), dim=1)
    before = torch.sigmoid(head.modality_logits(e, e, e))[0].detach()
    thresholds = {m: {c: float(before[k, j]) for j, c in enumerate(CLASSES)} for k, m in enumerate(MODALITIES)}
    head.fold_thresholds(thresholds, CLASSES)
    after = torch.sigmoid(head.modality_logits(e, e, e))[0]
    np.testing.assert_allclose(after.detach().numpy(), 0.5, atol=1e-5)


def test_nothing_present_gives_no_labels_and_finite_outputs():
    head = _head_with_logits({m: {c: 8.0 for c in CLASSES} for m in MODALITIES})
    probs, certainty, weights, consistency = _run(head, [0.0, 0.0, 0.0])
    assert (probs < 1e-6).all() and (weights == 0).all() and (certainty == 0).all() and consistency == 1.0
