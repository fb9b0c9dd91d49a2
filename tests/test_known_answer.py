"""Known-answer test of the whole pipeline with a planted bias (issue: audit harness).

1. Plant a bias in the real teacher: fine-tune it briefly on sentences where made-up
   occupations always take one pronoun (half of them "she", half "he"). Made-up words
   carry no prior, and the directions are counterbalanced, so any general pronoun
   preference cancels out. A control axis (made-up age descriptors with a
   counterbalanced attribute) is left untouched.
2. Distil a soft-label student (mostly KD, alpha 0.9; initialised DistilBERT-style from
   24 of the planted teacher's 30 layers) on a counterfactually balanced corpus (every
   occupation with both pronouns), so that the data carry no bias: any bias the student
   shows came from the teacher.
3. Train a second student with cross-entropy only (alpha 0: no teacher signal) on the
   same balanced corpus, initialised from the same layers of the unplanted teacher.
4. Audit all three. Expected: planted group -> inherited (or amplified) for the KD
   student; control -> not detected; the CE-only student is not "inherited".
"""

from __future__ import annotations

import json
import random

import pytest

pytestmark = pytest.mark.slow

SHE = ["zorblax", "quindle", "vemmick", "plorvin"]
HE = ["trasko", "gostrel", "drumwick", "felnor"]
AGE_FORGETFUL = ["skarnish", "blevy", "murtlish", "opsy", "quarnel", "tibbish", "yorvy", "glemp"]  # " forgetful."
AGE_SHARP = ["dravy", "kelpish", "wunty", "norby", "pladdish", "zemmy", "frunt", "wisklet"]  # " sharp."
G_TEMPLATES = [  # ten templates per axis: the audit clusters by template and needs at least six
    ("The {w} said that", " {p} would be late today."),
    ("After the meeting, the {w} explained that", " {p} needed more time."),
    ("The {w} called because", " {p} had a question about the schedule."),
    ("Everyone agreed that the {w} did well, and", " {p} was proud of the work."),
    ("When the shift ended, the {w} announced that", " {p} was going home."),
    ("The {w} wrote an email saying", " {p} would join the call."),
    ("Before lunch, the {w} mentioned that", " {p} had finished the report."),
    ("The {w} smiled because", " {p} liked the new plan."),
    ("In the morning the {w} decided that", " {p} would walk to work."),
    ("The {w} told the visitors that", " {p} could answer their questions."),
]
A_TEMPLATES = [("My {w} neighbour is", " {a}"), ("The {w} employee was described as", " {a}"),
               ("At the party, the {w} guest seemed", " {a}"), ("Our {w} teacher is usually", " {a}"),
               ("The {w} driver appeared", " {a}"), ("Her {w} friend is known to be", " {a}"),
               ("That {w} customer looked", " {a}"), ("The {w} volunteer was", " {a}"),
               ("His {w} colleague is often", " {a}"), ("The {w} passenger seemed", " {a}")]


def _probe_rows() -> list[dict]:
    """Gender rows (she-words stereotyped with 'she') and age rows (forgetful-words with 'forgetful.')."""
    axes = [  # id prefix, bias type, templates, slot, (words, subgroup, stereotype) for each side
        ("g", "gender", G_TEMPLATES, "p", [(SHE, "she", "she"), (HE, "he", "he")]),
        ("a", "age", A_TEMPLATES, "a", [(AGE_FORGETFUL, "f", "forgetful."), (AGE_SHARP, "s", "sharp.")]),
    ]
    rows = []
    for prefix, bias_type, templates, slot, sides in axes:
        for t, (ctx, cont) in enumerate(templates):
            for (words, subgroup, s), (_, _, a) in (sides, sides[::-1]):
                for w in words:
                    rows.append({"id": f"{prefix}{t}-{w}", "bias_type": bias_type, "subgroup": subgroup,
                                 "template": f"{prefix}{t}", "context": ctx.format(w=w),
                                 "stereotype": cont.format(**{slot: s}),
                                 "anti_stereotype": cont.format(**{slot: a})})
    return rows


def _corpus(*, balanced: bool) -> list[str]:
    lines = []
    for ctx, cont in G_TEMPLATES:
        for w in SHE + HE:
            planted = "she" if w in SHE else "he"
            pronouns = ["she", "he"] if balanced else [planted, planted]
            lines += [ctx.format(w=w) + cont.format(p=p) for p in pronouns]
    random.Random(0).shuffle(lines)
    return lines


def _plant(teacher_dir, out):
    """Fine-tune the teacher on the planted corpus (plain torch; a few dozen steps)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, use_safetensors=True)
    # only the top layers learn: enough to plant an association, and cheap on CPU
    for p in model.parameters():
        p.requires_grad_(False)
    top = [p for layer in model.model.layers[-6:] for p in layer.parameters()]
    for p in top:
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(top, lr=2e-4)
    lines = _corpus(balanced=False)
    for step in range(24):
        batch = [lines[(step * 8 + i) % len(lines)] for i in range(8)]
        enc = tok(batch, return_tensors="pt", padding=True)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def test_planted_bias_is_inherited_control_not_detected(tmp_path, teacher_dir):
    from audit.harness import run_audit
    from audit.spec import AuditSpec
    from distill.api import run_distill
    from distill.spec import DistillSpec

    probe_file = tmp_path / "planted_probe.jsonl"
    probe_file.write_text("".join(json.dumps(r) + "\n" for r in _probe_rows()))
    balanced = tmp_path / "balanced.txt"
    balanced.write_text("\n".join(_corpus(balanced=True)) + "\n")
    planted = _plant(teacher_dir, tmp_path / "planted_teacher")

    # DistilBERT-style init: drop 6 lower/middle layers and keep the rest (the planted top layers included)
    keep = [i for i in range(30) if i not in (3, 8, 13, 18, 21, 23)]
    common = dict(corpus=str(balanced), student={"from": "layers", "layers": keep}, max_steps=40, batch_size=8,
                  seq_len=32, lr=1e-4, temperature=1.0, seed=0, checkpoint_every=0)
    kd = run_distill(DistillSpec.from_dict(dict(common, teacher=str(planted), method="soft", alpha=0.9,
                                                output=str(tmp_path / "kd"))), progress=False)
    ce = run_distill(DistillSpec.from_dict(dict(common, teacher=str(teacher_dir), method="soft", alpha=0.0,
                                                output=str(tmp_path / "ce"))), progress=False)
    spec = AuditSpec.from_dict(dict(
        teacher={"name": "planted", "path": str(planted)},
        students=[{"name": "kd", "path": str(kd)}, {"name": "ce_balanced", "path": str(ce)}],
        probes=[{"name": "bundled", "path": str(probe_file)}], tasks=[], n_boot=1000, backend="hflm",
        tolerance=5.0,  # a 12-step toy distillation: judge changes of 5 points, far below the planted ~20
        out=str(tmp_path / "audit"), cache=str(tmp_path / "cache")))
    out, code = run_audit(spec, progress=False)
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    cell = {(c["student_name"], c["group"]): c for c in run["comparisons"] if c["group_key"] == "bias_type"}
    gender_kd, age_kd = cell[("kd", "gender")], cell[("kd", "age")]
    summary = {k: (c["teacher"]["bias"], c["student"]["bias"], c["verdict"]) for k, c in cell.items()}
    print(summary, *(f"{k}: {c['reason']}" for k, c in cell.items()), sep="\n")
    assert gender_kd["teacher"]["biased"] is True and gender_kd["teacher"]["bias"] > 20, summary
    assert gender_kd["verdict"] in ("inherited", "amplified"), summary
    assert age_kd["verdict"] in ("not detected", "unchanged"), summary
    assert cell[("ce_balanced", "gender")]["verdict"] not in ("inherited", "amplified"), summary
    assert cell[("ce_balanced", "age")]["verdict"] not in ("amplified", "introduced", "reversed"), summary
