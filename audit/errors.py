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


def did_you_mean(name: object, known) -> str:
    """' Did you mean: x?' for the closest known name, or ''."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.5)
    return f" Did you mean: {close[0]}?" if close else ""


def shown(value: object, limit: int = 120) -> str:
    """repr(value) for an error message, at most ``limit`` characters (then '...'): a few bytes of nested
    YAML aliases expand to megabytes, and a recursive alias has no end. Depth and length are bounded
    before anything is built."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 4, 8, 8, 8, 8
    r.maxstring, r.maxother, r.maxlong = limit, limit, limit
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails: name its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def yaml_location(exc: BaseException, text: str) -> str:
    """' line N' (1-based) of a YAML error: its problem mark, or for a reader error (a control
    character) the line of its character position; '' when neither is known."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return f" line {mark.line + 1}"
    position = getattr(exc, "position", None)
    if isinstance(position, int):
        return f" line {text.count(chr(10), 0, position) + 1}"
    return ""


def read_yaml(path, *, kind: str, missing: str):
    """The YAML document of a spec or policy file; every way it can be unreadable is a SpecError
    naming the file (and the line of a syntax error) and what to do. ``missing``: the message
    when the file does not exist."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError(missing)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}). Save the {kind} as UTF-8.") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}{yaml_location(exc, text)}: not valid YAML ({problem}). Fix the syntax.") from exc
    except RecursionError as exc:
        raise SpecError(f"{path}: YAML nested too deeply to read. Simplify the {kind}.") from exc
