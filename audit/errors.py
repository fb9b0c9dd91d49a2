"""Named exceptions. Every message says what was expected, what was found, and what to do."""


class BequeathError(Exception):
    """Base class: the CLI turns these into a clear message and exit code 2."""

    exit_code = 2


class SpecError(BequeathError):
    """A spec file or flag is missing, malformed or inconsistent."""


class ModelError(BequeathError):
    """A model could not be found, fetched, verified or loaded."""


class InputError(BequeathError):
    """Inputs that fail the check made before anything is scored (data files, models, tasks)."""


class RunDirError(BequeathError):
    """An output directory already holds a different run."""


def did_you_mean(name: str, known) -> str:
    """' Did you mean: x?' for the closest known name, or ''."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" Did you mean: {close[0]}?" if close else ""
