"""The ``main.py`` training CLI, by responsibility: :mod:`args` (options), :mod:`config` (YAML merge and
``lightning.trainer``), :mod:`paths` (logdir naming and resume), :mod:`trainer` (logger, checkpoints, callbacks,
learning rate, Trainer), :mod:`run` (fit/test and the exit status). ``main.py`` re-exports the public names."""
