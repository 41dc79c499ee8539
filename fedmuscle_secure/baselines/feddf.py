"""FedDF: ensemble distillation on public data, the ``feddf`` baseline (DESIGN §2.3).

Lin, Kong, Stich, Jaggi, "Ensemble Distillation for Robust Model Fusion in Federated
Learning", NeurIPS 2020. The server distils the ensemble of the clients' models (their
averaged logits on unlabelled data) into the fused model with a KL loss.

Adaptation here: models differ and are never fused, and only heads that share an output
space (the same task) can be ensembled. Per public batch each client releases its logits
(eval mode, un-augmented rows); the server averages them per output space leaving the
recipient out (:mod:`.group_outputs`), and each client distils toward the ensemble of its
OTHER partners — co-distillation rather than server-side fusion. The loss is Hinton's
KL(teacher_T ‖ student_T)·T² at T = 3 (FedDF distils at T = 1 with many server steps; one
step per batch here, and a softer target carries more of the teacher's ranking); for a
multi-label head the KL is per attribute between Bernoulli distributions. It trains the
encoder and the head with the contrastive-phase optimizer (cf. :mod:`.pseudo_label`).
A client whose output space no other organisation shares has no ensemble to distil from:
it releases nothing and takes no step (:func:`~fedmuscle_secure.baselines.phases.public_phase`),
so it trains as ``local`` does. Releases are logits, not unit-norm
representations, so representation noise (DESIGN §5.1) is refused for this method.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fedmuscle_secure.data.tasks import Task

__all__ = ["TEMPERATURE", "distillation_loss"]

TEMPERATURE = 3.0


def distillation_loss(task: Task, student: Tensor, teacher: Tensor,
                      temperature: float = TEMPERATURE) -> Tensor:
    """T²·KL(teacher ‖ student) at temperature T, mean over rows (and attributes)."""
    t = temperature
    s, te = student / t, teacher.to(student.dtype) / t
    if task.kind == "multiclass":
        kl = (F.softmax(te, -1) * (F.log_softmax(te, -1) - F.log_softmax(s, -1))).sum(-1)
    else:
        p = te.sigmoid()
        kl = (p * (F.logsigmoid(te) - F.logsigmoid(s))
              + (1 - p) * (F.logsigmoid(-te) - F.logsigmoid(-s)))
    return kl.mean() * t * t
