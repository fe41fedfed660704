"""The command-line edge shared by every script, used as `from grokmath import cli`: the flags and
their types (flags.py), the error and signal edge `main_guard` (guard.py) and `--config FILE`
(config_files.py). Nothing here imports torch at its top, so a script reaches main_guard first."""
from .flags import (MODEL_FIELDS, RESUME_FLAGS, SHARED_FLAGS, SWITCHES, TRAIN_FIELDS, ArgumentParser,  # noqa: F401
                    check_default_name_free, check_resume_flags, fraction, nonneg_float, nonneg_int, parse,
                    percentages, positive_float, positive_int, report, run_dir_of, run_training, setting_flag, shown,
                    train_config_defaults, training_configs, training_parser, whole_number)
from .guard import EXIT_USAGE, main_guard  # noqa: F401
