"""The built-in out-of-domain sets (trainers/docsets.py), built for real: apt fetches the FAQs'
Debian packages once per machine (then cached), the docstrings come from this Python."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trainers import docsets
from trainers.data import load_pairs
from trainers.tasks import pairs_task


@pytest.mark.parametrize(
    ("name", "at_least"), [("vim-faq", 300), ("unix-faqs", 120), ("python-docstrings", 800)]
)
def test_each_set_has_one_answer_per_question_and_real_answers(name, at_least):
    pairs = docsets.load_pairs(name)
    assert len(pairs) >= at_least
    questions = [p["anchor"].casefold() for p in pairs]
    assert len(set(questions)) == len(questions)
    assert all(len(p["positive"].split()) >= docsets.MIN_ANSWER_WORDS for p in pairs)
    # An answer is not its question again, nor the next entry's question glued on.
    assert all(p["anchor"].casefold() not in p["positive"].casefold() for p in pairs)
    if name != "python-docstrings":  # zsh's FAQ titles a few entries by topic, not question
        assert sum(p["anchor"].endswith("?") for p in pairs) >= 0.8 * len(pairs)
    assert docsets.origin(name)["cache_sha256"]


def test_the_unix_faqs_hold_every_faq_and_parse_known_entries():
    pairs = docsets.load_pairs("unix-faqs")
    by_faq = {}
    for p in pairs:
        by_faq.setdefault(p["entry"].split(":")[0], []).append(p)
    assert set(by_faq) == set(docsets.SETS["unix-faqs"])
    answers = {p["anchor"]: p["positive"] for p in pairs}
    assert answers["How do I perform a case-insensitive search?"].startswith(
        "Several versions of sed support case-insensitive matching"
    )
    assert "personal name" in answers["What should I put in `user.name`?"]


def test_a_built_in_set_is_a_guard_task_by_name():
    source = SimpleNamespace(
        data="vim-faq",
        data_split="train",
        query_column="anchor",
        passage_column="positive",
        group_column=None,
    )
    pairs, _ = load_pairs(source)
    assert {p.group for p in pairs} and len(pairs) >= 300
    task = pairs_task(source, 100, 30, seed=0)
    assert len(task.queries) == 30 and len(task.corpus) == 100
