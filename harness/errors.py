"""The project's exceptions, shared by `harness` and `tuner`.

    TunerError                  anything this tool reports to its user
     ├── ConfigError            bad configuration or flag value (exit code 2)
     ├── ModelError             model file missing, not ONNX, unusable batch dimension
     │    └── VariantUnavailable    no fp16/int8 variant of this model (the converter's reason)
     ├── BackendError           the inference runtime failed
     │    ├── BackendUnavailable    the runtime or its device is not installed here
     │    ├── ModelUnreadable       the runtime cannot read this model file (any batch, streams)
     │    └── OutOfMemory           the device ran out of memory
     └── ScenarioError          a LoadGen run could not produce a result

Every message is one line that names the offending value; the CLIs print it without a
traceback unless `--debug` is given.
"""

from __future__ import annotations


class TunerError(Exception):
    """Base of every error this tool reports to its user."""

    exit_code = 1


class ConfigError(TunerError):
    """A configuration key, flag or value is invalid."""

    exit_code = 2


class ModelError(TunerError):
    """The model cannot be used: missing, not ONNX, or without a dynamic batch dimension."""


class VariantUnavailable(ModelError):
    """The converter cannot make this precision of this model: that precision is infeasible
    for it (a trial says why; the study goes on)."""


class BackendError(TunerError):
    """The inference backend failed to load or to run."""


class BackendUnavailable(BackendError):
    """The backend's runtime or device is not present on this machine."""


class ModelUnreadable(BackendError):
    """The runtime cannot read the model file it was given (its frontend refuses an op it cannot
    convert): every configuration of this runtime that loads this file fails alike, whatever
    its batch or streams, while another runtime may read it. A study takes it as infeasible on
    `runtime` (as VariantUnavailable is on every runtime) and stops proposing those."""

    def __init__(self, runtime: str, message: str) -> None:
        super().__init__(message)
        self.runtime = runtime

    def __reduce__(self) -> tuple[type[ModelUnreadable], tuple[str, str]]:
        return type(self), (self.runtime, str(self))


class OutOfMemory(BackendError):
    """The device ran out of memory for this configuration."""


class ScenarioError(TunerError):
    """A LoadGen run failed to produce a result."""
