"""Test-only callback for python/warp_align/trl_backend.py (`--callback tests/ref/trl_policy_steps.py`): after
every optimizer step, the policy's full state dict in f32 goes to
$WARP_TRL_POLICY_STEPS/policy-N.safetensors (N = 1, 2, ...), and the initial weights to
policy-0.safetensors when training begins. tests/trl.rs recomputes the EMA of these iterates in
f64 and compares it with the run's ema folders (TRL's reference model).

With $WARP_TRL_SIGTERM_AT_STEP = N it also sends SIGTERM to its own process group at the end of
step N (after that step's saving, if any), as a cluster's preemption would.

With $WARP_TRL_REF_LOGPS = DIR (a PEFT policy), every reference log-probability computation TRL
makes (no gradient, adapter "ref" active) is recorded as DIR/ref-G.safetensors (G = the optimizer
steps done before it): input_ids, attention_mask, logits_to_keep and TRL's log-probs, for
tests/ref/lora_ref_logps.py to recompute from the saved EMA adapter."""

import os
import signal

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback


class PolicySteps(TrainerCallback):
    def __init__(self, trainer, folder):
        self.trainer = trainer
        self.folder = folder

    def save(self, step):
        acc = self.trainer.accelerator
        sd = acc.get_state_dict(self.trainer.model_wrapped, unwrap=True)
        if acc.is_main_process:
            os.makedirs(self.folder, exist_ok=True)
            sd = {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}
            save_file(sd, os.path.join(self.folder, f"policy-{step}.safetensors"))

    def on_train_begin(self, args, state, control, **kw):
        if state.global_step == 0 and os.environ.get("WARP_TRL_POLICY_STEPS"):
            self.save(0)

    def on_step_end(self, args, state, control, **kw):
        if os.environ.get("WARP_TRL_POLICY_STEPS"):
            self.save(state.global_step)

    def on_log(self, args, state, control, **kw):
        # After the step's metrics line; a save step's checkpoint comes later (on_save).
        if str(state.global_step) == os.environ.get("WARP_TRL_SIGTERM_AT_STEP"):
            os.killpg(os.getpgrp(), signal.SIGTERM)


def record_ref_logps(trainer, folder):
    orig = trainer._get_per_token_logps_and_entropies

    def wrapped(model, input_ids, attention_mask, logits_to_keep, *a, **kw):
        out = orig(model, input_ids, attention_mask, logits_to_keep, *a, **kw)
        peft = trainer.accelerator.unwrap_model(trainer.model)
        if not torch.is_grad_enabled() and peft.active_adapter == "ref":
            os.makedirs(folder, exist_ok=True)
            save_file({"input_ids": input_ids.cpu().contiguous(),
                       "attention_mask": attention_mask.cpu().contiguous(),
                       "logits_to_keep": torch.tensor([logits_to_keep]),
                       "logps": out[0].detach().float().cpu().contiguous()},
                      os.path.join(folder, f"ref-{trainer.state.global_step}.safetensors"))
        return out

    trainer._get_per_token_logps_and_entropies = wrapped


def callback(trainer):
    if os.environ.get("WARP_TRL_REF_LOGPS"):
        record_ref_logps(trainer, os.environ["WARP_TRL_REF_LOGPS"])
    return PolicySteps(trainer, os.environ.get("WARP_TRL_POLICY_STEPS"))
