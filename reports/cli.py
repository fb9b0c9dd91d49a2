"""``bequeath report RUN_DIR``: render a stored audit run (no model, no torch).

The app layer of the report: it loads and verifies the run (``audit.verify``), evaluates the
policy (``audit.verdicts``) and hands both to ``reports.render.write``, which only renders.
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="render a stored audit run as HTML, Markdown, JSON, JUnit, CSV, "
                              "a model card or LaTeX tables")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder holding run.json and items.jsonl")
    p.add_argument("--format", default="html,md,json,junit",
                   help="comma-separated formats among html, md, json, junit, csv, model-card, latex (default: "
                        "html,md,json,junit); csv writes comparisons.csv, one row per comparison for spreadsheets; "
                        "model-card writes MODEL_CARD.md: model-index front matter and, per student, the Hugging Face "
                        "card's 'Evaluation' and 'Bias, Risks, and Limitations' sections; latex writes verdicts.tex, "
                        "booktabs tables of the verdicts and task scores, and figures/forest-*.svg/.pdf "
                        "(see docs/report-formats.md)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR)")
    p.add_argument("--policy", default=None, help="gate policy YAML shown in the report (default: built-in policy)")
    p.set_defaults(func=run)


def render(run_dir: Path, out_dir: Path | None = None, formats=("html", "md", "json", "junit"),
           policy=None) -> dict[str, Path]:
    """Verify a stored run, apply ``policy`` (default: the built-in one) and write the report
    files into ``out_dir`` (default: the run folder); returns format -> path."""
    from audit.verdicts import Policy, evaluate
    from audit.verify import load_run, verify
    from probes.files import sha256_file
    from reports.render import check_formats, write

    check_formats(formats)  # before reading anything
    run, items = load_run(run_dir)
    gate = evaluate(run, policy or Policy(), extra=verify(run, items, sha256_file(Path(run_dir) / "items.jsonl")))
    return write(run, items, gate, Path(out_dir) if out_dir is not None else Path(run_dir), formats)


def run(args) -> int:
    from audit.errors import BequeathError
    from audit.verdicts import Policy

    try:
        policy = Policy.from_file(args.policy) if args.policy else None
        formats = [f.strip() for f in args.format.split(",") if f.strip()]
        paths = render(Path(args.run_dir), Path(args.out) if args.out else None, formats, policy)
    except BequeathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for fmt, path in paths.items():
        print(f"{fmt}: {path}")
    return 0
