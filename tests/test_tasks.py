"""Local task benchmarks run by lm-eval from the shared data files (tiny model: fast)."""

from __future__ import annotations

import pytest

from audit.errors import SpecError
from audit.lm import make_lm
from audit.tasks import LOCAL_TASKS, run_tasks


def test_every_local_task_runs_through_lm_eval_with_per_item_scores(tiny, data_dir):
    lm = make_lm(tiny, backend="hflm", batch_size=16)
    results = run_tasks(lm, list(LOCAL_TASKS), data_dir=data_dir, limit=4)
    assert [r.task for r in results] == list(LOCAL_TASKS)
    for r in results:
        assert r.error is None, r.task
        assert r.metric == LOCAL_TASKS[r.task].metric
        assert sorted(r.scores) == ["0", "1", "2", "3"], r.task
        assert set(r.scores.values()) <= {0.0, 1.0}
        assert r.data_file.startswith(str(data_dir)) or r.task == "bundled_qa"


def test_unknown_task_and_missing_data_dir_are_clear_errors(tiny):
    lm = make_lm(tiny, backend="hflm")
    with pytest.raises(SpecError, match="Did you mean: arc_easy_local"):
        run_tasks(lm, ["arc_easy"], data_dir=None)
    with pytest.raises(SpecError, match="data_dir"):
        run_tasks(lm, ["boolq_local"], data_dir=None)
