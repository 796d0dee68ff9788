"""The one exception the pipeline reports to its users as a plain sentence."""


class PipelineError(Exception):
    """A problem the user can act on: bad input, a checksum mismatch, a busy run directory."""
