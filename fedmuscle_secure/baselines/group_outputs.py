"""Server math shared by the output-space baselines (``cofed``, ``feddf``; DESIGN §2.3, §3).

Both aggregate what the clients that share an *output space* (the same task, so the same
head outputs, e.g. two ``digit10`` clients) released on a public batch: CoFED averages
hard-prediction votes, FedDF averages logits. Clients of different tasks have heads of
different widths, so the releases are zero-padded to the widest head, stacked, and
averaged with one (N, N) membership matrix in one einsum — batched over clients on the
server's device, no per-client loop in the math.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.messages import GroupOutputs, TaskOutputs

__all__ = ["group_means", "group_output_replies", "output_space_membership"]


def output_space_membership(spaces: list[str], *, include_self: bool) -> Tensor:
    """(N, N) 0/1: row n marks the clients whose output space equals n's (n itself when
    ``include_self``)."""
    n = len(spaces)
    w = torch.tensor([[float(spaces[a] == spaces[b]) for b in range(n)] for a in range(n)])
    if not include_self:
        w.fill_diagonal_(0.0)
    return w.reshape(n, n)


def group_means(outputs: list[Tensor], membership: Tensor, *,
                device: torch.device | str = "cpu") -> list[Tensor]:
    """Per client n, the mean over its group of the released outputs, each (nb, B, C_n).

    ``outputs``: client n's release (nb, B, C_n); a client with an empty group gets zeros
    (the message's empty member list tells it not to use them).
    """
    dev = torch.device(device)
    width = max(int(o.shape[-1]) for o in outputs)
    padded = torch.stack([torch.nn.functional.pad(o.to(dev, torch.float32), (0, width - o.shape[-1]))
                          for o in outputs])                     # (N, nb, B, C_max)
    w = membership.to(dev, torch.float32)
    sums = torch.einsum("nm,mbkc->nbkc", w, padded)
    means = sums / w.sum(1).clamp_min(1.0)[:, None, None, None]
    return [means[i, ..., : o.shape[-1]].cpu() for i, o in enumerate(outputs)]


def group_output_replies(method: str, round_: int, epoch: int, batch: int | None, order: list[str],
                         releases: dict[str, TaskOutputs], spaces: dict[str, str], *,
                         device: torch.device | str) -> list[GroupOutputs]:
    """Every client's :class:`GroupOutputs` of one exchange.

    ``cofed`` votes among the whole group, the recipient included (CoFED builds one
    pseudo-labelled set for all); ``feddf`` averages the OTHER members only (each client
    distils from the ensemble of its partners, not of itself).
    """
    space = [spaces[c] for c in order]
    for c in order:
        first = next(o for o in order if spaces[o] == spaces[c])
        if releases[c].outputs.shape[-1] != releases[first].outputs.shape[-1]:
            raise ProtocolError(c, "collecting", f"released {releases[c].outputs.shape[-1]} outputs "
                                f"per row, but {first!r} of the same task {spaces[c]!r} released "
                                f"{releases[first].outputs.shape[-1]}")
    w = output_space_membership(space, include_self=method == "cofed")
    means = group_means([releases[c].outputs for c in order], w, device=device)
    out = []
    for n, c in enumerate(order):
        peers = tuple(order[m] for m in range(len(order)) if w[n, m] > 0)
        out.append(GroupOutputs(c, round_, epoch, batch, peers, means[n]))
    return out
