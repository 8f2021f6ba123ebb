"""Test-only callback for python/warp_align/trl_backend.py (`--callback tests/ref/trl_policy_steps.py`): after
every optimizer step, the policy's full state dict in f32 goes to
$WARP_TRL_POLICY_STEPS/policy-N.safetensors (N = 1, 2, ...), and the initial weights to
policy-0.safetensors when training begins. tests/trl.rs recomputes the EMA of these iterates in
f64 and compares it with the run's ema folders (TRL's reference model).

With $WARP_TRL_SIGTERM_AT_STEP = N it also sends SIGTERM to its own process group at the end of
step N (after that step's saving, if any), as a cluster's preemption would."""

import os
import signal

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


def callback(trainer):
    return PolicySteps(trainer, os.environ.get("WARP_TRL_POLICY_STEPS"))
