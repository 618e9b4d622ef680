"""The seeded malformed-input corpus (tests/fuzz_corpus.py) through `onnxq inspect`, `quantize` and `eval`.

For every case and command: exit code 0 or 2 (never 1, never an exception), a first stderr line `error:` on
2, the inputs byte-identical afterwards, nothing left in the output folder by a failure, and a failure where
the case must fail (an external-data escape, an output that is an input, a FIFO). Cases run in-process,
except those with a FIFO, which run in a subprocess with a timeout so that a hang fails the test instead of
stalling it. bench/fuzz_inputs.py runs the same generator at 1,000+ cases, each in a subprocess.
"""

from __future__ import annotations

from collections import Counter

import pytest

import fuzz_corpus
from fuzz_corpus import FAMILIES, generate, run_case

CASES = 360
SEED = 20260601


@pytest.fixture(scope="module")
def cases() -> list[fuzz_corpus.Case]:
    return generate(CASES, SEED)


def test_the_corpus_is_seeded_and_covers_every_family(cases):
    again = generate(CASES, SEED)
    assert [c.name for c in again] == [c.name for c in cases]
    assert [c.files for c in again] == [c.files for c in cases]  # byte for byte
    assert generate(40, SEED + 1)[0].name != cases[0].name or generate(40, SEED + 1)[1].name != cases[1].name
    assert [c.name for c in generate(50, SEED)] == [c.name for c in cases[:50]]  # a prefix of a longer run
    klasses = Counter(c.klass for c in cases)
    assert len(cases) >= 300 and len(klasses) == len(FAMILIES) and min(klasses.values()) >= 5
    assert sum(c.hang_risk for c in cases) >= 1 and sum(bool(c.must_fail) for c in cases) >= 60


def test_malformed_inputs_are_clean_errors_and_leave_no_trace(cases, tmp_path):
    problems, known, outcomes = [], [], Counter()
    for i, case in enumerate(cases):
        root = tmp_path / f"c{i:03d}"
        root.mkdir()
        for command, (ran, problem) in run_case(case, root, timeout=30).items():
            outcomes[fuzz_corpus.outcome(command, ran, problem)] += 1
            if problem and case.known:
                known.append(case.name)
            elif problem:
                problems.append(f"{case.name} [{command}]: {problem}")
    assert not problems, f"{len(problems)} problems in {len(cases)} cases:\n" + "\n".join(problems[:30])
    assert outcomes["clean error"] > 0 and outcomes["quantized"] > 0  # both paths are exercised
