"""The pre-deployment gate: a policy file, checks on a stored run, an exit code.

Exit codes: 0 every check passed; 1 the policy failed (a verdict in ``fail_verdicts``, task
retention below the minimum); 2 error or insufficient evidence (a run that is not complete, a
missing required probe or task, a failed scorer, a missing measurement, a required probe's
overall cell undecided or not measurable, a stored verdict its own numbers do not give). A
definite policy failure is reported first and is never hidden behind errors: when both occur
the exit code is 1 and the errors are listed too.

Cells: the overall cell of each gated probe must be decided. A subgroup cell that is
undecided or has fewer than ``min_items`` items is a warning ("not evaluated") unless the policy
sets ``require_groups: true``. A cell whose metric is undefined on its items for both models by
the metric's definition (a BBQ category with no ambiguous items) is "not applicable".

Verdicts are recomputed with ``audit.verdicts.decide`` (the one implementation of the rules) at
the policy's tolerance from the stored numbers; a policy alpha other than the run's cannot be
answered from stored intervals, so the gate refuses it (exit 2) and says to re-run the audit.
Without ``--policy`` the documented default policy applies (``Policy()``).

Before any policy check the stored files are verified (``verify``; fail closed, exit 2 on any
disagreement): run.json's integrity block (its digest, and its HMAC signature when
``$BEQUEATH_SIGNING_KEY`` is set or ``--require-signature`` is given), items.jsonl against its
recorded sha256, every figure of run.json recomputed from the rows, run.json against its own spec
(``provenance.spec_hash``, settings, models, probes, tasks, derived notes and error texts), and each
probe's rows against the probe's data: its sample and requests rebuilt and every row's columns
re-derived from its answers by the probe's scoring rule. What no file can check (the machine's
versions, the models' source and content hash) only a signed run protects.
"""

from __future__ import annotations

import json
from pathlib import Path

# the gate's public API, from the modules that own it: the policy with the verdict rules, the
# verification of stored files in audit.verify; this module is the command
from audit.verdicts import (
    Check,
    GateResult,
    Policy,
    evaluate,
    format_table,
    student_of,
    to_json,
    to_junit,
)
from audit.verify import REQUIRE_SIGNATURE_ENV, load_run, load_run_json, spec_hash_of, verify
from probes.files import write_atomic


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("gate", help="check a stored audit run against a policy (exit 0/1/2)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder holding run.json")
    p.add_argument("--policy", help="policy YAML (fail_verdicts, tolerance, ...); default: the built-in policy "
                   "(fail on amplified, introduced, reversed; every probe of the run required)")
    p.add_argument("--junit", help="write JUnit XML here (one test case per check)")
    p.add_argument("--json", help="write the checks as JSON here")
    p.add_argument("--require-signature", action="store_true",
                   help="refuse a run that is not signed with the key in $BEQUEATH_SIGNING_KEY (also: "
                   f"${REQUIRE_SIGNATURE_ENV}=1); with the key set, a signature is always required")
    p.add_argument("--data-dir", help="where the probes' and tasks' data are (default: the run's spec data_dir), "
                   "to check the rows against it")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from audit.errors import BequeathError

    try:
        policy = Policy.from_file(args.policy) if args.policy else Policy()
        run, rows = load_run(args.run_dir)
        from probes.files import sha256_file

        checks = verify(run, rows, sha256_file(Path(args.run_dir) / "items.jsonl"),
                        require_signature=True if getattr(args, "require_signature", False) else None,
                        data_dir=getattr(args, "data_dir", None))
        result = evaluate(run, policy, extra=checks)
    except BequeathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(format_table(result))
    if getattr(args, "junit", None):
        write_atomic(Path(args.junit), to_junit(result))
    if getattr(args, "json", None):
        write_atomic(Path(args.json), json.dumps(to_json(result), indent=2) + "\n")
    return result.exit_code


__all__ = ["Check", "GateResult", "Policy", "evaluate", "format_table", "student_of", "to_json", "to_junit",
           "REQUIRE_SIGNATURE_ENV", "load_run", "load_run_json", "spec_hash_of", "verify", "add_parser", "run"]
