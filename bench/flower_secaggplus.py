"""Flower SecAgg+ (flwr==1.41.0) measured in-process, for "ours vs Flower" benchmarks.

What runs is Flower's own code, unmodified, with only the transport replaced:

* Clients: ``flwr.client.mod.secure_aggregation.secaggplus_mod`` itself, called once per
  message with a per-node ``Context``; it dispatches to Flower's stage handlers
  ``_setup``, ``_share_keys``, ``_collect_masked_vectors`` and ``_unmask``. The wrapped
  "ClientApp" (``call_next``) only returns the client's fixed vector as a ``FitRes``;
  its time is subtracted from the client time.
* Server: ``SecAggPlusWorkflow.__call__`` itself (setup_stage, share_keys_stage,
  collect_masked_vectors_stage, unmask_stage) with a ``LegacyContext``, a FedAvg
  strategy (only for ``configure_fit``) and a ``SimpleClientManager`` of
  ``GridClientProxy``. ``aggregate_fit`` is overridden to capture the unmasked
  aggregate instead of re-averaging N identical copies of it (non-SecAgg work).
* Transport: ``_InProcessGrid`` (a ``Grid`` subclass) delivers every message and reply
  through a protobuf round trip (``message_to_proto`` -> bytes -> ``message_from_proto``),
  as the SuperLink would, so no object is shared between server and clients. No
  network, Ray, SuperLink or SuperNode. Transport time counts for neither side.

Timing (``time.perf_counter``): client time = time inside ``secaggplus_mod`` minus the
``call_next`` stub; server time = wall time of the workflow call minus all time spent
inside ``Grid.send_and_receive`` (transport + clients). Flower's logger is set to
WARNING while timing.

Dropout: the dropped clients answer setup and share_keys and then never answer again,
i.e. they drop after sending their encrypted shares and before the masked-input
(collect_masked_vectors) stage, so the server reconstructs their ``sk1`` from shares.

Parameters: Flower's defaults clipping_range=8.0, quantization_range=2**22,
modulus_range=2**32, max_weight=1000.0; num_shares=num_clients (full graph);
reconstruction_threshold=threshold. Every client reports num_examples=max_weight, so
Flower's weighting factor is exactly 1 and the workflow's output is the plain mean of
the survivors; the sum is that mean times the number of survivors. ``correct`` checks it
against the float64 plaintext sum within Flower's quantization error (stochastic
rounding: < one step 2*8/2**22 per client).
"""

from __future__ import annotations

import logging
import random
import statistics
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np

try:
    import flwr
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
    from flwr.common import (
        Code,
        FitRes,
        Parameters,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.compat.common import recorddict_compat as compat
    from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow
    from flwr.serverapp.grid import Grid
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise RuntimeError("Flower is not installed: pip install -e .[bench]  (flwr==1.41.0)") from exc

FLOWER_VERSION: str = flwr.__version__

CLIPPING_RANGE = 8.0  # SecAggPlusWorkflow defaults
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
MAX_WEIGHT = 1000.0
_RUN_ID = 7
_LATE_STAGES = (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)


def _transport(msg: Message) -> Message:
    """Serialize and parse a message, as the SuperLink does; returns an independent copy."""
    return message_from_proto(ProtoMessage.FromString(message_to_proto(msg).SerializeToString()))


class _InProcessGrid(Grid):
    """Grid that delivers each message synchronously to that node's ``secaggplus_mod``."""

    def __init__(self, vectors: dict[int, np.ndarray], dropped: set[int]) -> None:
        self._vectors = vectors
        self._dropped = dropped
        self._contexts = {
            nid: Context(run_id=_RUN_ID, node_id=nid, node_config={}, state=RecordDict(),
                         run_config={})
            for nid in vectors
        }
        self.client_s = dict.fromkeys(vectors, 0.0)
        self.inside_s = 0.0  # all time spent in send_and_receive
        self._app_s = 0.0

    def _client_app(self, msg: Message, ctxt: Context) -> Message:
        """The wrapped ClientApp: 'training' just returns this node's fixed vector."""
        t0 = time.perf_counter()
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([self._vectors[ctxt.node_id]]),
                        int(MAX_WEIGHT), {})
        reply = Message(compat.fitres_to_recorddict(fitres, False), reply_to=msg)
        self._app_s += time.perf_counter() - t0
        return reply

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        t_in = time.perf_counter()
        replies: list[Message] = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            if nid in self._dropped and stage in _LATE_STAGES:
                continue  # dropped after share_keys: never replies again
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as InMemoryGrid does
            delivered = _transport(msg)
            self._app_s = 0.0
            t0 = time.perf_counter()
            reply = secaggplus_mod(delivered, self._contexts[nid], self._client_app)
            self.client_s[nid] += time.perf_counter() - t0 - self._app_s
            replies.append(_transport(reply))
        self.inside_s += time.perf_counter() - t_in
        return replies

    # The rest of the Grid API is not used by SecAggPlusWorkflow.
    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._vectors)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError


class _CaptureAggregate(FedAvg):
    """FedAvg for ``configure_fit``; ``aggregate_fit`` only keeps the SecAgg+ output."""

    captured: Parameters | None = None

    def aggregate_fit(self, server_round: int, results: Any,
                      failures: Any) -> tuple[Parameters | None, dict[str, Any]]:
        # unmask_stage sets every FitRes.parameters to the unmasked aggregate
        self.captured = results[0][1].parameters
        return None, {}


def _one_round(vectors: dict[int, np.ndarray], dropped: set[int],
               threshold: int) -> tuple[float, float, np.ndarray]:
    """Run one full SecAgg+ round; returns (total client s, server s, aggregate mean)."""
    n = len(vectors)
    length = next(iter(vectors.values())).shape[0]
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, _RUN_ID, SUPERLINK_NODE_ID
    grid = _InProcessGrid(vectors, dropped)
    strategy = _CaptureAggregate(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                                 min_available_clients=n)
    manager = SimpleClientManager()
    for nid in vectors:
        manager.register(GridClientProxy(nid, grid, _RUN_ID))
    base = Context(run_id=_RUN_ID, node_id=SUPERLINK_NODE_ID, node_config={},
                   state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=strategy, client_manager=manager)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({"current_round": 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord(
        [np.zeros(length, dtype=np.float32)])  # the "global model" sent with FitIns
    workflow = SecAggPlusWorkflow(num_shares=n, reconstruction_threshold=threshold,
                                  max_weight=MAX_WEIGHT, clipping_range=CLIPPING_RANGE,
                                  quantization_range=QUANTIZATION_RANGE,
                                  modulus_range=MODULUS_RANGE)
    t0 = time.perf_counter()
    workflow(grid, context)
    wall = time.perf_counter() - t0
    if strategy.captured is None:
        raise RuntimeError("Flower SecAgg+ halted (see the flwr log) - no aggregate")
    mean = parameters_to_ndarrays(strategy.captured)[0]
    return sum(grid.client_s.values()), wall - grid.inside_s, mean


def run_flower_secaggplus(*, num_clients: int, vector_length: int, dropout: float,
                          threshold: int, repeats: int = 3) -> dict[str, float]:
    """One SecAgg+ aggregation of `num_clients` int/float vectors of length `vector_length`,
    with a fraction `dropout` of clients dropping after sending their encrypted shares
    (i.e. before the masked-input stage), `threshold` = reconstruction threshold,
    num_shares = num_clients (full graph, like Bonawitz). Returns medians over `repeats`:
    {"client_s": mean per-client compute seconds over all stages, "server_s": server compute
    seconds, "total_s": client_s * num_clients + server_s (sequential compute), and also
    "correct": 1.0 if the unmasked sum equals the plaintext sum of the survivors (within
    Flower's quantization error), else 0.0}.

    ``client_s`` is the clients' total compute divided by ``num_clients`` (dropped
    clients count with the two stages they ran), so ``total_s`` is exactly the
    sequential compute. Extra key: ``max_abs_err`` (worst over repeats) of the sum.
    """
    n_drop = round(dropout * num_clients)
    if num_clients < 3 or not 2 <= threshold < num_clients:
        raise ValueError("SecAgg+ needs num_clients >= 3 and 2 <= threshold < num_clients")
    if num_clients - n_drop < threshold:
        raise ValueError(f"{num_clients - n_drop} survivors < threshold {threshold}")
    if num_clients * QUANTIZATION_RANGE >= MODULUS_RANGE:
        raise ValueError("num_clients * quantization_range must stay below modulus_range")
    data = np.random.default_rng(0).uniform(-1.0, 1.0, (num_clients, vector_length))
    data = data.astype(np.float32)
    ids = random.Random(0).sample(range(SUPERLINK_NODE_ID + 1, 2**62), num_clients)
    vectors = dict(zip(ids, data, strict=True))
    step = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE

    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    clients, servers, errors = [], [], []
    try:
        for rep in range(repeats):
            dropped = set(random.Random(rep).sample(ids, n_drop))
            client_total, server_s, mean = _one_round(vectors, dropped, threshold)
            survivors = [nid for nid in ids if nid not in dropped]
            expected = np.sum([vectors[nid].astype(np.float64) for nid in survivors], axis=0)
            errors.append(float(np.max(np.abs(mean * len(survivors) - expected))))
            clients.append(client_total / num_clients)
            servers.append(server_s)
    finally:
        flwr_logger.setLevel(old_level)
    # Flower's stochastic rounding errs by < 1 step per surviving client (+ float slack)
    bound = (num_clients - n_drop) * step * (1 + 1e-6) + 1e-9
    client_s, server_s = statistics.median(clients), statistics.median(servers)
    return {
        "client_s": client_s,
        "server_s": server_s,
        "total_s": client_s * num_clients + server_s,
        "correct": 1.0 if max(errors) <= bound else 0.0,
        "max_abs_err": max(errors),
    }


if __name__ == "__main__":
    print(f"flwr {FLOWER_VERSION}")
    for drop in (0.0, 0.3):
        res = run_flower_secaggplus(num_clients=10, vector_length=1000, dropout=drop,
                                    threshold=7)
        print(f"N=10 L=1000 dropout={drop}: {res}")
