"""The one exception type that the CLI turns into a one-line message instead of a traceback."""


class AutotuneError(Exception):
    """A problem the user can fix: bad input, an unreachable server, a config Triton refuses."""


class TrialFailed(AutotuneError):
    """One trial could not be measured (its config was refused, no request succeeded); the study goes on."""
