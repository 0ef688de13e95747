"""The one error root: every error that reaches the user as one clear line derives from DcoordError.

The CLI catches DcoordError (never a bare ValueError), prints its message and exits with its
``exit_code``: 1 = the run failed or could not go on, 2 = bad input (config, scheme, workload, privacy
parameters), 3 = a run that had to stop, 4 = a worker whose coordinator (or launcher) went away without
telling it to stop. Domain errors that validators raise inside pydantic models also
derive from ValueError, because pydantic turns only ValueError/AssertionError into a validation error.
"""

#: exit statuses (the CLI's and the launchers'); scripts and orchestrators may branch on them
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3
EXIT_LOST_COORDINATOR = 4


class DcoordError(Exception):
    """Base class: the message is the whole story for the user."""

    exit_code = EXIT_FAILED


class ConfigError(DcoordError):
    """A job config or CLI value that is not allowed; names the field and what is allowed."""

    exit_code = EXIT_BAD_INPUT


class RunFailed(DcoordError):
    """A run that cannot go on (too many workers lost, a round past its deadline)."""

    exit_code = EXIT_STOPPED


class InputError(DcoordError, ValueError):
    """Bad parameters of one domain (a scheme, a workload, a privacy mechanism, a walk); exit status 2."""

    exit_code = EXIT_BAD_INPUT


class SchemeError(InputError):
    """Invalid scheme parameters; the message names the parameter and what is allowed."""


class WorkloadError(InputError):
    """A workload name that does not resolve, or a user function that returns the wrong thing."""


class PrivacyError(InputError):
    """Privacy parameters that cannot be met, or a noise secret that cannot be read."""


class AccountingError(PrivacyError):
    """A privacy accounting input out of range, or a budget no noise level in range can meet."""


class WalkError(InputError):
    """Invalid random-walk parameters (chain, graph, step sizes)."""


class StragglerError(InputError):
    """An injected-straggler setting or a delay trace that cannot be used (names the field or file row)."""


class PayloadError(DcoordError, ValueError):
    """A tensor on the wire that cannot be trusted (unknown dtype, size mismatch, non-finite values)."""


class DataPlaneError(DcoordError):
    """A data-plane message that breaks the protocol (lost or reordered sequence number, bad header)."""


class KeyRefused(DataPlaneError):
    """The data plane did not take this registration's key: the registration was superseded (its id was
    taken over before its Work stream opened), so the worker registers again."""


class DecodeError(DcoordError, RuntimeError):
    """A job could not be decoded (not enough results, or the residual check failed)."""


class SimulationError(DcoordError, RuntimeError):
    """A scheme failed to decode a job by its deadline (a scheme bug), or the inputs cannot be simulated."""
