"""`python tests/hybrid/training/train_then_die.py STEP key=value…`: `hybrid train` in this process with a callback
that SIGKILLs it right after the checkpoint of step STEP — a real kill at a known point, for the resume tests. The
hook is the tests' own (`train(after_checkpoint=…)`): the training loop knows nothing of it."""

from __future__ import annotations

import os
import signal
import sys

from hybrid.cli.config import load_config
from hybrid.training.train import train


def die_after(step: int):
    def after_checkpoint(at: int, checkpoint) -> None:
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return after_checkpoint


if __name__ == "__main__":
    train(load_config(sys.argv[2:]).recipe(), after_checkpoint=(die_after(int(sys.argv[1])),))
    sys.exit("train_then_die: the run ended without reaching its step")
