"""grokmath: a minimal, hookable transformer codebase for the mechanistic interpretability of
small models trained on toy tasks (addition, arithmetic, skip-trigrams, induction, modular).

The package's own names (ModelConfig, Transformer, HookPoint, ActivationCache) load on first use,
so that a script reaches its error and signal handling (grokmath.cli.main_guard) before torch is
imported."""
import importlib

__all__ = ["ModelConfig", "Transformer", "HookPoint", "ActivationCache"]
__version__ = "0.1.0"
_HOME = {"ModelConfig": "config", "Transformer": "model.transformer", "HookPoint": "model.hook_point",
         "ActivationCache": "model.activation_cache"}


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
