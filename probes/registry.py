"""Name registry of probes: built-ins by name, plugins through the ``bequeath.probes``
entry-point group. Users write names and numbers in YAML, never class paths."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from probes.base import Probe, ProbeError

# name -> "module:factory"; the factory takes the probe's options as keyword arguments.
BUILTIN: dict[str, str] = {
    "bundled": "probes.bundled:BundledProbe",
    "crows_pairs": "probes.crows_pairs:CrowsPairsProbe",
    "stereoset": "probes.stereoset:StereoSetProbe",
    "bbq": "probes.bbq:BBQProbe",
    "winobias": "probes.coref:WinoBiasProbe",
    "winogender": "probes.coref:WinogenderProbe",
    "holisticbias": "probes.holisticbias:HolisticBiasProbe",
    "bold": "probes.bold:BoldProbe",
}


def _all() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in entry_points(group="bequeath.probes"):
        found.setdefault(ep.name, ep.value)
    return found


def available() -> list[str]:
    """Names of the probes that can be built (built-ins whose module exists, and plugins)."""
    names = []
    for name, target in _all().items():
        mod = target.split(":")[0]
        if importlib.util.find_spec(mod) is not None:
            names.append(name)
    return sorted(names)


def get_probe(name: str, **options: Any) -> Probe:
    """Build the probe ``name`` with ``options``; a did-you-mean error for unknown names."""
    import difflib

    known = available()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" Did you mean: {close[0]}?" if close else ""
        raise ProbeError(f"Unknown probe '{name}'.{hint} Known probes: {', '.join(known)}.")
    mod, _, attr = _all()[name].partition(":")
    factory = getattr(importlib.import_module(mod), attr)
    try:
        return factory(**options)
    except TypeError as exc:
        raise ProbeError(f"Probe '{name}': bad option ({exc}). See `bequeath ls probes`.") from exc
