"""Sending this process a signal from inside a training step, for the signal and resume tests."""
import os
import signal


def signal_at(model, at, signum=signal.SIGINT):
    """Make `model` send this process `signum` during its `at`-th forward call (a forward pre-hook, so
    the state dict is the model's own; for a stack of seeds, `model` is the stack's shared module)."""
    calls = [0]

    def hook(module, args):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signum)

    model.register_forward_pre_hook(hook)
    return model
