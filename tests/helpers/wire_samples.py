"""Sample protocol messages of every kind, plain and CKKS (fake ciphertexts), shared by the
wire-format and wire-limit tests: one message per case, built once from a seeded generator."""

from __future__ import annotations

import math

import torch

from fedmuscle_secure.crypto.ckks import (
    EncryptedMatrix,
    EncryptedRowValues,
    RowLayout,
)
from fedmuscle_secure.messages import (
    EncryptedPeers,
    EncryptedRepresentations,
    EncryptedSums,
    EncryptedSumTerms,
    ExchangeAborted,
    Finish,
    Leave,
    PeerSums,
    PeerTerms,
    Representations,
    RoundPlan,
    RoundReport,
    SitOut,
    SumTerms,
)

GEN = torch.Generator().manual_seed(0)
PEERS = (("c1", "c2"), ("c2", "c3"))


def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN, dtype=dtype)


def unit_rows(*shape: int) -> torch.Tensor:
    z = randn(*shape)
    return z / z.norm(dim=-1, keepdim=True)


# --- plain protocol messages ---------------------------------------------------------------

PLAIN = {
    "round_plan": RoundPlan("c1", 3, "per_batch", torch.randint(0, 500, (2, 3, 8), generator=GEN),
                            ("c1", "c2", "c3")),
    "representations_per_epoch": Representations("c1", 3, 1, None, unit_rows(3, 8, 5)),
    "representations_batch_0": Representations("c2", 3, 1, 0, unit_rows(1, 8, 5)),
    "peer_terms": PeerTerms("c1", 3, 0, 4, (("c2", "c3"),), randn(1, 2, 8, 5),
                            randn(1, 2, 8, 8)),
    "peer_terms_pairwise": PeerTerms("c1", 3, 0, None, PEERS, randn(2, 2, 8, 5),
                                     torch.zeros(2, 0, 8, 8)),
    "peer_sums": PeerSums("c3", 0, 2, 1, PEERS[:1], randn(1, 8, 5), randn(1, 8), False),
    "sum_terms": SumTerms("c2", 1, 0, None, ("c1", "c2", "c3"), randn(2, 8, 5, dtype=torch.float64),
                          randn(2, 8, dtype=torch.float64)),
    "sum_terms_loo": SumTerms("c2", 1, 0, 7, ("c1", "c3"), randn(1, 8, 5), randn(1, 8),
                              includes_self=False),
    "round_report": RoundReport("c1", 9, {"val_metric": 0.8125, "cl_loss": float("nan"),
                                          "eps_record": math.inf, "cl_steps": 12.0}),
    "round_report_empty": RoundReport("c1", 0, {}),
    "round_report_withheld": RoundReport("c1", 2, {"eps_record": 1.5},
                                         withheld=("task_loss", "val_metric")),
    "finish": Finish("c2", 4),
    "leave": Leave("c3", 4, "privacy budget (epsilon 8.0) would be exceeded"),
    "exchange_aborted": ExchangeAborted("c1", 2, 1, None, "only 1 of 3 clients reached unmask"),
    "sit_out": SitOut("c2", 3, 0, 5, "already released for this exchange (ledger seq 17)"),
    "sit_out_per_epoch": SitOut("c2", 3, 1, None, "already released"),
}


LAYOUT = RowLayout(rows=5, cols=3, row_stride=4, rows_per_ciphertext=2)  # 3 ciphertexts


def fake_matrix(tag: int) -> EncryptedMatrix:
    return EncryptedMatrix(LAYOUT, tuple(bytes([tag, i]) * 40 for i in range(3)))


def fake_rows(tag: int) -> EncryptedRowValues:
    return EncryptedRowValues(LAYOUT, tuple(bytes([tag, i, 0]) * 9 for i in range(3)))


CKKS = {
    "representations": EncryptedRepresentations("c1", 2, 0, None, (fake_matrix(1), fake_matrix(2)),
                                                (fake_rows(3), fake_rows(4))),
    "representations_no_q": EncryptedRepresentations("c1", 2, 0, 5, (fake_matrix(1),), ()),
    "sum_terms": EncryptedSumTerms("c2", 2, 1, None, PEERS, (fake_matrix(5), fake_matrix(6)),
                                   (fake_rows(7), fake_rows(8))),
    "sums": EncryptedSums("c3", 2, 1, 0, PEERS[:1], (fake_matrix(9),), (fake_rows(10),)),
    "peers": EncryptedPeers("c1", 2, 1, None, PEERS,
                            ((fake_matrix(11), fake_matrix(12)), (fake_matrix(13), fake_matrix(14)))),
}
