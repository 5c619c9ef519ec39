"""Errors that are the user's to fix: the entry point prints them without a traceback."""


class PipelineError(ValueError):
    """A problem with the input, the config or the run directory, stated with what to do."""
