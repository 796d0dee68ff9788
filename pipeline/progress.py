"""How the log says a duration, for the epoch lines and the whole-run line alike."""


def minutes(seconds: float) -> str:
    """Seconds under a minute, else minutes with one decimal: "42 s", "12.5 min"."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"
