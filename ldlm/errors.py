"""Errors a user can act on (and the graceful stop on a signal, which is not one).

Every problem caused by input (a config key, a missing stage output, an empty corpus,
an over-long prompt) is raised as a subclass of `LdlmError` with a message that names
the problem and, where there is one, the fix. The command-line entry points print these
messages without a traceback; anything else is a bug and keeps its traceback.
"""

import signal


class LdlmError(Exception):
    """Base class of errors caused by the user's input, reported without a traceback."""


class ConfigError(LdlmError):
    """A bad config key, value or type."""


class DataError(LdlmError):
    """A missing, empty or unreadable data set."""


class MissingStageError(LdlmError):
    """A stage's input is missing; the message names the make target that produces it."""

    def __init__(self, what: str, path, target: str):
        super().__init__(f"{what} not found at {path}: run `make {target}` first "
                         f"(with the same EXP, PRESET and RUN).")
        self.path = path
        self.target = target


class CheckpointDamaged(LdlmError):
    """A checkpoint that cannot be read completely (truncated, garbled or missing files)."""

    def __init__(self, message: str, step: int | None = None, reason: str = ""):
        super().__init__(message)
        self.step = step
        self.reason = reason


class DiskFull(LdlmError):
    """A checkpoint could not be written for lack of space; older ones are intact."""


class CheckpointMismatch(LdlmError):
    """A readable checkpoint of another model than the one the config builds."""


class StageLocked(LdlmError):
    """Another live process is training the same stage of the same run."""


class PipelineError(LdlmError):
    """A sampling request that cannot be served (bad argument, missing capability)."""


class TrainingStopped(LdlmError):
    """Training stopped on a signal (SIGTERM, SIGINT) after saving the step it stopped at;
    `exit_status` is 128 + the signal's number, as a shell reports a process the signal
    killed, so that schedulers which requeue on SIGTERM see what they expect."""

    def __init__(self, stage: str, step: int, signum: int):
        self.stage, self.step, self.signum = stage, step, signum
        self.exit_status = 128 + int(signum)
        super().__init__(f"{stage}: stopped at step {step} on {signal.Signals(signum).name}; "
                         "resume with the same command")
