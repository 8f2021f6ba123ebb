"""warp_align.warp_trl on a real TRL RLOOTrainer (CPU) with a model made by transformers: the EMA the
callback saves equals the EMA of the policy iterates recomputed in f64, the run folder has warp's
layout, and a SLERP of two such runs from Python equals `warp slerp` byte for byte."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from safetensors.numpy import load_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    TrainerCallback,
)

from conftest import ROOT, assert_same_tree, cli  # noqa: E402
from warp_align.warp_trl import WarpEMACallback, merge_runs  # noqa: E402

MU = 0.3
STEPS = 3


class Iterates(TrainerCallback):
    """Test-only: the policy's parameters in f64 when training begins and after every step."""

    def __init__(self):
        self.steps = []

    def _take(self, model):
        self.steps.append({n: p.detach().double().cpu().numpy().copy()
                           for n, p in model.named_parameters()})

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._take(model)

    def on_step_end(self, args, state, control, model=None, **kw):
        self._take(model)


def ema_f64(iterates, mu):
    e = {k: v.copy() for k, v in iterates[0].items()}
    for it in iterates[1:]:
        for k in e:
            e[k] = (1 - mu) * e[k] + mu * it[k]
    return e


def max_diff(a, b):
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """A tiny Llama made by transformers, with the built-in task's tokenizer."""
    d = tmp_path_factory.mktemp("init") / "model"
    tok = AutoTokenizer.from_pretrained(ROOT / "fixtures/arith/model")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def train(init, run, seed):
    import datasets
    import transformers
    from trl import RLOOConfig, RLOOTrainer

    transformers.logging.disable_progress_bar()

    torch.set_num_threads(1)
    prompts = [json.loads(line)["prompt"]
               for line in open(ROOT / "fixtures/arith/train.jsonl")][:16]
    args = RLOOConfig(
        output_dir=str(run.parent / f".trl-{run.name}"), use_cpu=True, bf16=False,
        per_device_train_batch_size=8, num_generations=4, max_steps=STEPS,
        max_completion_length=6, temperature=1.0, beta=0.0, learning_rate=1e-2,
        save_strategy="steps", save_steps=2, logging_steps=1, report_to="none",
        disable_tqdm=True, seed=seed, data_seed=seed, dataloader_num_workers=0,
    )

    def reward(prompts, completions, **_):
        # Distinct characters: varies across samples, so the leave-one-out advantages are not 0.
        return [float(len(set(c))) for c in completions]

    iterates = Iterates()
    tok = AutoTokenizer.from_pretrained(init, padding_side="left")
    trainer = RLOOTrainer(model=str(init), reward_funcs=[reward], args=args,
                          train_dataset=datasets.Dataset.from_list([{"prompt": p}
                                                                    for p in prompts]),
                          processing_class=tok,
                          callbacks=[WarpEMACallback(run, mu=MU), iterates])
    trainer.train()
    return iterates.steps


@pytest.fixture(scope="module")
def runs(init, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return {m: (d / f"run-{m}", train(init, d / f"run-{m}", seed=m)) for m in (1, 2)}


def test_the_saved_ema_is_the_ema_of_the_policy_iterates(runs, init):
    run, it = runs[1]
    assert len(it) == STEPS + 1
    for t in range(1, STEPS + 1):
        moved = max_diff({k: v.astype(np.float32) for k, v in it[t].items()}, it[t - 1])
        assert moved > 1e-4, f"step {t} left the policy unchanged"
    # warp's run layout.
    # (The trainer saves every save_steps = 2 steps and at its last step.)
    saves = ["step-000002", f"step-{STEPS:06d}"]
    assert sorted(p.name for p in run.iterdir()) == ["final", "run.json", *saves]
    for d in ("final", *saves):
        assert sorted(p.name for p in (run / d).iterdir()) == ["ema", "policy"]
        for w in ("ema", "policy"):
            assert (run / d / w / "model.safetensors").is_file()
            assert (run / d / w / "config.json").is_file()
            assert (run / d / w / "tokenizer.json").is_file()
    rec = json.loads((run / "run.json").read_text())
    assert rec["backend"] == "trl-callback" and rec["mu"] == MU and rec["steps"] == STEPS
    for d, t in (("step-000002", 2), (saves[1], STEPS), ("final", STEPS)):
        ema = load_file(run / d / "ema" / "model.safetensors")
        pol = load_file(run / d / "policy" / "model.safetensors")
        assert all(v.dtype == np.float32 for v in ema.values())
        err = max_diff(ema, ema_f64(it[: t + 1], MU))
        print(f"{d}/ema: max |saved - f64 EMA of the iterates| = {err:.2e}")
        assert err < 1e-6, f"{d}/ema is not the EMA of the iterates ({err})"
        assert max_diff(pol, it[t]) == 0.0, f"{d}/policy is not the policy after step {t}"
    # Negative controls: another mu, the init and the last policy are all far from it.
    ema = load_file(run / "final/ema/model.safetensors")
    assert max_diff(ema, ema_f64(it, 0.36)) > 1e-4
    assert max_diff(ema, it[0]) > 1e-4
    assert max_diff(ema, it[-1]) > 1e-4
    # warp reads the folders.
    cli("inspect", run / "final/ema")


def test_slerp_of_two_runs_from_python_equals_warp_slerp(runs, init, tmp_path):
    r1, r2 = runs[1][0], runs[2][0]
    got = merge_runs([r1, r2], init, etas=[0.5, 1.0], out=tmp_path / "py")
    cli("slerp", r1 / "final/policy", r2 / "final/policy", "--init", init, "--eta", 0.5,
        "--eta", 1.0, "-o", tmp_path / "cli", "-q")
    assert_same_tree(tmp_path / "py", tmp_path / "cli")
    assert [p.name for p in got.outputs] == ["eta-0.50", "eta-1.00"]
    assert got.report["tensors"]
    # LITI of one run through the same helper.
    merge_runs([r1], init, method="liti", etas=[0.5], out=tmp_path / "liti-py")
    cli("liti", "--init", init, "--merged", r1 / "final/policy", "--eta", 0.5,
        "-o", tmp_path / "liti-cli", "-q")
    assert_same_tree(tmp_path / "liti-py", tmp_path / "liti-cli")
