"""One registry of the names users write: probes, tasks and distillation techniques.

Each kind has its built-ins and an entry-point group, ``bequeath.<kind>``, for plugins:

- probes: ``probes.registry`` (built-ins and ``bequeath.probes``);
- tasks: ``audit.tasks.all_tasks()`` (``LOCAL_TASKS`` and ``bequeath.tasks``, each a ``LocalTask``).
  These are bequeath's own; a spec's ``tasks:`` also takes any name lm-eval knows or finds in
  ``task_paths``, resolved by ``audit.tasks`` with lm-eval's ``TaskManager`` (not listed here: lm-eval's
  catalogue has ~14k names and costs 10 s to index; ``lm_eval ls tasks`` lists it);
- techniques: ``bequeath.techniques`` only. ``distill`` registers its methods there by name in
  pyproject.toml, so listing them reads installed metadata and never imports ``distill``
  (audit sits below distill); ``get`` loads the entry point, as for any plugin.

``available(kind)`` lists names; ``get(kind, name)`` returns the thing or raises ``SpecError``
with a did-you-mean.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from audit.errors import SpecError, did_you_mean

KINDS = ("probes", "tasks", "techniques")


def group(kind: str) -> str:
    """The entry-point group of ``kind``: ``bequeath.probes``, ``bequeath.tasks``, ``bequeath.techniques``."""
    _check_kind(kind)
    return f"bequeath.{kind}"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise SpecError(f"Unknown registry kind '{kind}'.{did_you_mean(kind, KINDS)} Kinds: {', '.join(KINDS)}.")


def _plugins(kind: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group(kind))}


def available(kind: str) -> list[str]:
    """The names of ``kind`` that can be asked for, sorted."""
    _check_kind(kind)
    if kind == "probes":
        from probes.registry import available as probe_names

        return probe_names()
    if kind == "tasks":
        from audit.tasks import all_tasks

        return sorted(all_tasks())
    return sorted(_plugins(kind))


def unknown(kind: str, name: str) -> str | None:
    """None if ``name`` is a known ``kind``, else the message: what was given, the closest name, all names."""
    known = available(kind)
    if name in known:
        return None
    singular = kind[:-1]
    return f"Unknown {singular} '{name}'.{did_you_mean(name, known)} Known {kind}: {', '.join(known) or '(none)'}."


def get(kind: str, name: str, **options: Any) -> Any:
    """The probe (built with ``options``), the ``LocalTask``, or the technique object named ``name``."""
    problem = unknown(kind, name)
    if problem:
        raise SpecError(problem)
    if kind == "probes":
        from probes.registry import get_probe

        return get_probe(name, **options)
    if options:
        raise SpecError(f"{kind[:-1].capitalize()} '{name}' takes no options; got {', '.join(options)}.")
    if kind == "tasks":
        from audit.tasks import all_tasks

        return all_tasks()[name]
    try:
        return _plugins(kind)[name].load()
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"{kind[:-1].capitalize()} '{name}' is registered but cannot be loaded ({exc}); "
                        "is the package that provides it installed?") from exc
