"""Each distillation objective against a computation by hand (plain Python floats) on a small batch."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from fixtures import every_objective

from callbacks.hparams_results import method_name
from errors import ConfigError
from lightning_modules.losses import soft_cross_entropy
from lightning_modules.objectives import (
    DIST,
    DKD,
    DistillationBatch,
    HintonKD,
    LogitStandardizedKD,
    SoftCrossEntropy,
    as_objective,
    hard_label_cross_entropy,
)

STUDENT = [[1.0, 0.5, -0.5, 0.0], [0.2, -1.0, 2.0, 0.3], [-0.3, 0.8, 0.1, 1.5]]
TEACHER = [[2.5, 0.0, -1.0, 0.5], [0.0, -2.0, 3.0, 1.0], [0.5, 1.0, -0.5, 2.0]]
LABELS = [0, 2, 1]


def view(epoch: float = 100.0, labels=LABELS) -> DistillationBatch:
    teacher = torch.tensor(TEACHER)
    return DistillationBatch(
        torch.tensor(STUDENT), torch.tensor(labels) if labels is not None else None, teacher.softmax(-1), teacher, epoch
    )


def softmax(row: list[float], t: float = 1.0) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def kl(q: list[float], p: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(q, p, strict=True) if a > 0)


def test_hinton_kd_is_t_squared_kl_from_the_softened_mean_logits():
    t = 4.0
    by_hand = sum(kl(softmax(z, t), softmax(s, t)) for s, z in zip(STUDENT, TEACHER, strict=True)) / 3 * t * t
    assert float(HintonKD(t)(view())) == pytest.approx(by_hand, rel=1e-5)


def test_logit_standardized_kd_is_hinton_kd_on_z_scored_logits_and_ignores_each_rows_scale():
    def z_score(row: list[float]) -> list[float]:
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))  # the sample std, as the reference code
        return [(v - mean) / (std + 1e-7) for v in row]

    t = 2.0
    pairs = zip(STUDENT, TEACHER, strict=True)
    by_hand = sum(kl(softmax(z_score(z), t), softmax(z_score(s), t)) for s, z in pairs) / 3 * t * t
    assert float(LogitStandardizedKD(t)(view())) == pytest.approx(by_hand, rel=1e-5)
    batch = view()
    rescaled = DistillationBatch(
        batch.student_logits, batch.labels, batch.mean_probabilities, 3 * batch.mean_logits + 1
    )
    assert float(LogitStandardizedKD(t)(rescaled)) == pytest.approx(by_hand, rel=1e-4)  # relations, not scale


def test_soft_cross_entropy_reads_the_mean_of_probabilities():
    batch = view()
    torch.testing.assert_close(
        SoftCrossEntropy()(batch), soft_cross_entropy(batch.student_logits, batch.mean_probabilities)
    )


def test_dkd_is_weighted_target_and_non_target_kl_times_t_squared():
    alpha, beta, t = 1.0, 8.0, 4.0
    total = 0.0
    for s, z, y in zip(STUDENT, TEACHER, LABELS, strict=True):
        ps, pt = softmax(s, t), softmax(z, t)
        tckd = kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        others = [c for c in range(4) if c != y]
        nckd = kl(softmax([z[c] for c in others], t), softmax([s[c] for c in others], t))
        total += alpha * tckd + beta * nckd
    by_hand = total / 3 * t * t
    assert float(DKD(alpha, beta, t, warmup_epochs=20)(view(epoch=100.0))) == pytest.approx(by_hand, rel=1e-5)


def test_dkd_warm_up_scales_the_loss_linearly_in_epochs():
    dkd = DKD(warmup_epochs=4.0)
    full = float(dkd(view(epoch=4.0)))
    assert full > 0
    assert float(dkd(view(epoch=1.0))) == pytest.approx(full / 4, rel=1e-6)
    assert float(dkd(view(epoch=0.0))) == 0.0
    assert float(DKD(warmup_epochs=0)(view(epoch=0.0))) == pytest.approx(full, rel=1e-6)


def test_dkd_gradients_are_finite_for_confident_logits():
    student = torch.tensor([[40.0, -40.0, 0.0, 5.0]], requires_grad=True)
    teacher = torch.tensor([[-30.0, 50.0, 0.0, 1.0]])
    batch = DistillationBatch(student, torch.tensor([1]), teacher.softmax(-1), teacher, epoch=50.0)
    DKD()(batch).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_dist_is_inter_plus_intra_class_pearson_distance_times_tau_squared():
    beta, gamma, tau = 2.0, 3.0, 4.0
    ps = [softmax(s, tau) for s in STUDENT]
    pt = [softmax(z, tau) for z in TEACHER]
    inter = 1 - sum(pearson(a, b) for a, b in zip(ps, pt, strict=True)) / 3
    columns = range(4)
    intra = 1 - sum(pearson([r[c] for r in ps], [r[c] for r in pt]) for c in columns) / 4
    by_hand = tau * tau * (beta * inter + gamma * intra)
    assert float(DIST(beta, gamma, tau)(view())) == pytest.approx(by_hand, rel=1e-4)


def test_dist_is_zero_when_the_student_matches_the_teacher():
    teacher = torch.tensor(TEACHER)
    batch = DistillationBatch(teacher.clone(), None, teacher.softmax(-1), teacher)
    assert float(DIST()(batch)) == pytest.approx(0.0, abs=1e-4)  # eps in the Pearson denominators


def test_hard_label_term_is_cross_entropy_on_the_labels_and_says_when_they_are_missing():
    batch = view()
    expected = sum(-math.log(softmax(s)[y]) for s, y in zip(STUDENT, LABELS, strict=True)) / 3
    assert float(hard_label_cross_entropy(batch)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="needs the hard labels"):
        DKD()(view(labels=None))


def test_objectives_round_trip_through_the_checkpoints_hyperparameters_and_name_themselves_in_the_hparams_tab():
    for objective in (HintonKD(2.5), DKD(1.0, 8.0, 4.0, 1.0), DIST(2.0, 2.0, 4.0), *(c() for c in every_objective())):
        restored = as_objective(objective.describe())
        assert type(restored) is type(objective) and vars(restored) == vars(objective)
        hp = {"teachers": [{}], "objective": objective.describe(), "objective_weight": 9.0, "hard_label_weight": 0.1}
        assert objective.label != "?" and method_name(hp).startswith(f"9.0 x {objective.label}")
        assert method_name(hp).endswith(" + 0.1 x hard labels")
    assert isinstance(as_objective(None), SoftCrossEntropy)
    assert method_name({"teachers": [{}]}) == "MEAL V2" and method_name({"teachers": []}) == "hard labels"
    assert method_name({"teachers": [{}], "objective": HintonKD(2.0).describe()}) == "Hinton KD (temperature=2.0)"


TEMPERATURES = {c: p for c in every_objective() for p in ("temperature", "tau") if p in inspect.signature(c).parameters}


@pytest.mark.parametrize("make", [lambda: HintonKD(0), lambda: DKD(temperature=-1), lambda: DIST(tau=0)])
def test_objectives_refuse_a_non_positive_temperature(make):
    with pytest.raises(ConfigError, match="must be positive"):
        make()
    for cls, name in TEMPERATURES.items():  # and every objective with a temperature
        with pytest.raises(ConfigError, match="must be positive"):
            cls(**{name: 0.0})
