"""The one exception the pipeline reports to its users as a plain sentence, and the hint for a typo in one."""
import difflib


class PipelineError(Exception):
    """A problem the user can act on: bad input, a checksum mismatch, a busy run directory."""


def did_you_mean(names, choices) -> str:
    """" Did you mean conv2_relu?" for each name that is not one of the choices but looks like a typo of one."""
    choices = list(choices)
    close = [match for name in names if name not in choices
             for match in difflib.get_close_matches(str(name), choices, n=1)]
    return f" Did you mean {' or '.join(close)}?" if close else ""
