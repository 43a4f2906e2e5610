"""The review's mutant table (tests/mutants/review.py) stays applicable: each mutated line is
still in its file exactly once, and the test that catches it still exists. (Running the
mutants takes minutes: `python tests/mutants/review.py`, docs/testing.md.)"""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
from helpers.train import REPO

NAME, PATH = "s2s_review_mutants", REPO / "tests" / "mutants" / "review.py"
spec = importlib.util.spec_from_file_location(NAME, PATH)
review = sys.modules.setdefault(NAME, importlib.util.module_from_spec(spec))
spec.loader.exec_module(review)  # registered first: its dataclass looks its module up


@pytest.mark.parametrize("mutant", review.MUTANTS, ids=lambda m: m.name)
def test_each_mutant_still_applies_and_names_a_test(mutant):
    assert (REPO / mutant.path).read_text().count(mutant.old) == 1, mutant.path
    path, _, name = mutant.test.partition("::")
    assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), mutant.test
