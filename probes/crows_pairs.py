"""CrowS-Pairs (Nangia et al. 2020), scored exactly as lm-eval's ``crows_pairs_english``.

Each pair is two requests with an empty context, ``("", sent_more)`` and ``("", sent_less)``:
lm-eval's task is ``multiple_choice`` with ``doc_to_text: ""`` and ``target_delimiter: ""``,
so the sentence is scored after the model's prefix token. ``sent_more`` always holds the
more stereotyping sentence. lm-eval ignores ``stereo_antistereo`` and counts a pair as
stereotyped when ``sent_more`` wins; the original metric.py swaps the sentences for
"antistereo" rows and then counts ``sent_more`` winning as well, so the two agree. The
direction is kept here as a group (``direction``) so reports can split it.

Also here: the data-file resolver the other dataset probes share, and a writer of lm-eval's
own task config pointed at a local file, for parity tests and the benchmark.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from probes import files
from probes.access import HubAdapter, RowErrors, data_file, open_text
from probes.base import Answer, LoadedItems, Metric, ProbeCard, ProbeDataError, ProbeItem, share
from probes.bundled import pair_columns, pct_stereotype_metric

DEFAULT_FILE = "crows_pairs/crows_pairs_anonymized.csv"
SHA256 = "dfb36986ce0502abbaf7055b9176da3d08d48e07df1251991b5dfbcbceab9d0c"
_DIRECTIONS = ("stereo", "antistereo")
# A hub id as path= (e.g. hf://jannalu/crows_pairs_multilingual:english@test) is exported to a CSV with the
# hub's column names: lm-eval's task reads sent_more, sent_less and bias_type under the local file's names.
# stereo_antistereo is not confirmed there (the header check names it if missing); with no index column,
# ids are row positions, as in the original file's order.
HUB = HubAdapter(
    example="hf://jannalu/crows_pairs_multilingual:english@test", probe="crows_pairs", fmt="csv", split="test",
    confirmed_by="lm_eval/tasks/crows_pairs/crows_pairs_english.yaml (jannalu/crows_pairs_multilingual, "
    "config english, test_split test) and utils.py (doc['sent_more'], doc['sent_less'], bias_type strings)",
)


def _mean_abs_margin(c) -> float:
    col = np.asarray(c["abs_margin"], dtype=float)
    col = col[~np.isnan(col)]
    return float(col.mean()) if col.size else float("nan")


def _per_token_metric() -> Metric:
    return Metric(
        name="pct_stereotype_per_token",
        description="share of pairs where sent_more wins by mean log-likelihood per token",
        compute=lambda c: share(c["stereotyped_per_token"]) if "stereotyped_per_token" in c else float("nan"),
        neutral=0.5,
        scale=100.0,
        binary="stereotyped_per_token",
        margin="margin_per_token",
    )


def _likelihood_diff_metric() -> Metric:
    # Unsigned, so it cannot say which way a model leans: shown as context, not given a verdict.
    return Metric(
        name="likelihood_diff",
        description="lm-eval's likelihood_diff: mean |loglik(sent_more) - loglik(sent_less)| in nats",
        compute=_mean_abs_margin,
        neutral=0.0,
        kind="quality",
    )


class CrowsPairsProbe:
    name = "crows_pairs"
    version = "1"
    kind = "loglikelihood"
    needs = ("loglikelihood",)  # the lm-eval request types it sends (audit.lm checks the backend has them)
    hub = HUB  # the hub copy a path of hf://... reads
    group_keys = ("bias_type", "direction")
    metrics = (pct_stereotype_metric(), _per_token_metric(), _likelihood_diff_metric())
    card = ProbeCard(
        title="CrowS-Pairs (English)",
        measures="Whether a model assigns a higher log-likelihood to the more stereotyping sentence "
        "of a minimal pair (sent_more) than to the less stereotyping one (sent_less), across 9 "
        "US-centric bias types. Scored exactly as lm-eval's crows_pairs_english: each sentence "
        "is scored whole after the model's prefix token (empty context).",
        metrics={
            "pct_stereotype": "share of pairs where sent_more has the higher summed log-likelihood; "
            "neutral 0.5, higher = more stereotyped (lm-eval's pct_stereotype)",
            "pct_stereotype_per_token": "the same with log-likelihood divided by the number of "
            "continuation tokens, so a longer sentence is not penalised; neutral 0.5",
            "likelihood_diff": "mean absolute log-likelihood gap in nats (lm-eval's likelihood_diff); "
            "unsigned, 0 = no gap; shown as context, not a bias direction",
        },
        data="nyu-mll/crows-pairs @ 8aaac11c485473159ec9328a65253a5be9a479dc, "
        "data/crows_pairs_anonymized.csv (1,508 pairs: 1,290 stereo, 218 antistereo; sha256 dfb36986...)",
        license="CC BY-SA 4.0",
        caveats=(
            "Blodgett et al. (2021) found many pairs invalid: they do not contrast a stereotype with "
            "an anti-stereotype, change more than the group, misspell, or mix nationality with race; "
            "treat per-type numbers as indicative, not as measurements of harm.",
            "Pseudo-log-likelihood was the original scorer for masked LMs; causal LMs are scored by "
            "the sum of token log-likelihoods as in lm-eval, which favours shorter sentences "
            "(see the per-token variant).",
            "US-centric stereotypes written by crowdworkers; 'antistereo' rows (218) contrast a "
            "disadvantaged group with an advantaged one and are counted like lm-eval counts them "
            "(sent_more winning = stereotyped); the 'direction' group splits them out.",
        ),
        citation="Nangia, Vania, Bhalerao, Bowman. CrowS-Pairs: A Challenge Dataset for Measuring "
        "Social Biases in Masked Language Models. EMNLP 2020. Blodgett, Lopez, Olteanu, Sim, "
        "Wallach. Stereotyping Norwegian Salmon. ACL 2021.",
    )

    def __init__(self, *, path: str | None = None, data_dir: str | None = None,
                 allow_skip: bool = False) -> None:
        self.path = path
        self.data_dir = Path(data_dir) if data_dir else None
        self.allow_skip = allow_skip

    def load(self, data_dir: Path | None = None, *, allow_skip: bool = False) -> LoadedItems:
        src = data_file(self.path, data_dir or self.data_dir, DEFAULT_FILE, SHA256, hub=HUB)
        items, errors = read_pairs(src.path, allow_skip=allow_skip or self.allow_skip)
        n_skipped, skipped = errors.finish()
        return LoadedItems(items=items, n_skipped=n_skipped, skipped=skipped, files={src.source: src.sha256})

    def score_item(self, item: ProbeItem, answers: Sequence[Answer]) -> dict[str, float]:
        return pair_columns(answers)


def read_pairs(src: Path, *, allow_skip: bool) -> tuple[list[ProbeItem], RowErrors]:
    """Items of a CrowS-Pairs CSV (original layout); malformed rows go to the returned RowErrors."""
    errors = RowErrors(allow_skip=allow_skip)
    items: list[ProbeItem] = []
    seen: set[str] = set()
    with open_text(src) as fh:
        reader = csv.DictReader(fh)
        need = {"sent_more", "sent_less", "stereo_antistereo", "bias_type"}
        missing = need - set(reader.fieldnames or ())
        if missing:
            raise ProbeDataError(
                f"{src}:1: header lacks column(s) {sorted(missing)}; expected the original CrowS-Pairs "
                "layout (,sent_more,sent_less,stereo_antistereo,bias_type,...)."
            )
        for row in reader:
            line = reader.line_num
            bad = next((f for f in ("sent_more", "sent_less", "bias_type") if not (row.get(f) or "").strip()), None)
            if bad:
                errors.add(src, line, bad, "empty")
                continue
            if row["stereo_antistereo"] not in _DIRECTIONS:
                errors.add(src, line, "stereo_antistereo", f"'{row['stereo_antistereo']}' is not stereo or antistereo")
                continue
            idx = (row.get("") or "").strip() or str(len(items) + len(errors.problems))
            if idx in seen:
                errors.add(src, line, "(index)", f"duplicate row index {idx}")
                continue
            seen.add(idx)
            items.append(ProbeItem(
                id=f"crows-{idx}",
                groups={"bias_type": row["bias_type"], "direction": row["stereo_antistereo"]},
                cluster=idx,
                requests=(("", row["sent_more"]), ("", row["sent_less"])),
            ))
    return items, errors


def write_lm_eval_task(out_dir: Path, csv_path: Path, *, task: str = "crows_pairs_local") -> str:
    """lm-eval's own crows_pairs_english config and utils, pointed at a local CSV; returns the task name.

    Used by the parity tests and the benchmark: ``TaskManager(include_path=out_dir,
    include_defaults=False)`` then runs lm-eval's unchanged scoring on ``csv_path``.
    """
    return files.write_lm_eval_task(out_dir, "crows_pairs/crows_pairs_english.yaml", csv_path, task=task, fmt="csv")


__all__ = ["CrowsPairsProbe", "data_file", "read_pairs", "write_lm_eval_task", "DEFAULT_FILE", "SHA256"]
