"""Text clients in `run`, end to end (DESIGN §2.6, §8.2): they learn their task, take part
in every protection mode with DP, their ledgers audit, and MiniLM starts from its package."""

import csv

import pytest
import torch

from fedmuscle_secure.cli.audit import main_audit
from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.federation.checks import parse_config
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.models.text import minilm_state
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.text_files import text_config_raw, write_corpus


@pytest.mark.slow
def test_text_clients_learn_their_topics(tmp_path):
    """Chance is 1/3 over three topics; a word-level topic cue is learnt in a few epochs."""
    raw = text_config_raw(write_corpus(tmp_path / "data", n=400),
                          training={"rounds": 1, "local_epochs": 8, "local_batch_size": 16,
                                    "lr": 0.003},
                          muscle={"method": "local", "dim": 16, "batch_size": 32})
    res = run_experiment(parse_config(raw), tmp_path / "run", progress=False)
    assert set(res.final["local"]) == {"a", "b", "c"}
    assert min(res.final["local"].values()) > 0.6, res.final


@pytest.mark.slow
@pytest.mark.parametrize("protection, method", [("secagg", "muscle_sum"), ("ckks", "muscle")])
def test_text_clients_under_protection_and_dp_audit(tmp_path, protection, method):
    raw = text_config_raw(write_corpus(tmp_path / "data", n=300, public=120),
                          protection=protection, compare_local=False,
                          training={"rounds": 1, "local_epochs": 1, "local_batch_size": 16},
                          muscle={"method": method, "num_selected": 2, "batch_size": 32, "dim": 16,
                                  "exchange": "per_epoch"},
                          privacy={"delta": 1e-5,
                                   "dp_sgd": {"enabled": True, "noise_multiplier": 1.0,
                                              "expected_batch_size": 8},
                                   "representation_noise": {"enabled": True,
                                                            "noise_multiplier": 0.1}})
    res = run_experiment(parse_config(raw), tmp_path / "run", progress=False)
    assert set(res.final[method]) == {"a", "b", "c"}
    with open(res.run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["round"] == "1"]
    assert {r["client"] for r in rows} == {"a", "b", "c"}
    assert all(float(r["cl_steps"]) > 0 and float(r["eps_record"]) > 0
               and float(r["eps_client"]) > 0 for r in rows)
    assert main_audit([str(res.run_dir)]) == 0


@pytest.mark.slow
def test_a_minilm_client_with_lora_starts_from_the_packaged_weights(tmp_path):
    text = write_corpus(tmp_path / "data", n=240, public=100)
    text["tokenizer"] = "minilm"
    clients = [{"name": "a", "model": "text_transformer", "task": "classify",
                "model_kwargs": {"hidden_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 64}},
               {"name": "b", "model": "text_transformer", "task": "classify",
                "model_kwargs": {"hidden_size": 48, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 64}},
               {"name": "m", "model": "minilm", "pretrained": True, "task": "classify",
                "adapter": {"kind": "lora", "rank": 4}}]
    raw = text_config_raw(text, clients=clients, compare_local=False,
                          training={"rounds": 1, "local_epochs": 1, "local_batch_size": 16})
    cfg = parse_config(raw)
    fed = build_federation(cfg, make_split(cfg), "muscle")
    published = minilm_state("f")
    fresh = {k: v.clone() for k, v in fed.clients["m"].model.backbone.bert.state_dict().items()}
    run_round(fed, 1)
    state = fed.clients["m"].model.backbone.bert.state_dict()
    # the frozen weights are the published ones, bit for bit, before and after the round;
    # the adapters moved
    for key in ("encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight",
                "encoder.layer.5.output.dense.weight"):
        base = key.replace("query.weight", "query.base_layer.weight")
        assert torch.equal(fresh[base], published[key]) and torch.equal(state[base], published[key])
    moved = [k for k in state if "lora_B" in k and not torch.equal(state[k], fresh[k])]
    assert moved and all(".query." in k or ".value." in k for k in moved)
    assert fed.clients["m"].cl_losses  # it took contrastive steps with its peers
