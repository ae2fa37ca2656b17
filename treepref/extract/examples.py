"""A small hand-built tree for the tests and the examples in docs/formats.md.

``python -m treepref.extract.examples`` prints three rows of every format, as pasted into the docs.
"""

from __future__ import annotations

import json

from treepref.tree import ROLLOUT, ROOT, Tree


def example_tree() -> Tree:
    """What is 2 + 3 * 4?  Node ids in creation order::

        0 root
        ├─ 1 "3 * 4 = 12."                    value 0.75 (4 visits), mc 3/4, prm 0.9
        │  ├─ 3 "2 + 12 = 14. The answer is 14."  terminated, reward 1, value 1 (3 visits)
        │  └─ 4 "2 + 12 = 15. The answer is 15."  terminated, reward 0, value 0 (1 visit)
        ├─ 2 "2 + 3 = 5."                     value 0 (2 visits), mc 0/4, prm 0.2
        │  ├─ 5 "5 * 4 = 20. The answer is 20."   terminated, reward 0, value 0 (2 visits)
        │  └─ 6 rollout "So 5 * 4 = 20. The answer is 20."  terminated, reward 0
        ├─ 7 "Let me think."                  never visited (no value)
        └─ 8 a refinement of node 7 (info: refines 7, critique), terminated, reward 1 (judge 0.25 -> 1.0)
    """
    t = Tree(problem_id="p1", prompt="What is 2 + 3 * 4?", answer="14")
    s1 = t.add(ROOT, "3 * 4 = 12.", n_tokens=6)
    s2 = t.add(ROOT, "2 + 3 = 5.", n_tokens=6)
    s3 = t.add(s1, "2 + 12 = 14. The answer is 14.", n_tokens=12, reward=1.0, terminated=True)
    s4 = t.add(s1, "2 + 12 = 15. The answer is 15.", n_tokens=12, reward=0.0, terminated=True)
    s5 = t.add(s2, "5 * 4 = 20. The answer is 20.", n_tokens=12, reward=0.0, terminated=True)
    t.add(s2, "So 5 * 4 = 20. The answer is 20.", n_tokens=13, reward=0.0, terminated=True, kind=ROLLOUT)
    s7 = t.add(ROOT, "Let me think.", n_tokens=4)
    s8 = t.add(ROOT, "3 * 4 = 12, and 2 + 12 = 14. The answer is 14.", n_tokens=20, reward=1.0, terminated=True,
               info={"refines": s7, "critique": "No progress: compute 3 * 4 first.",
                     "refine_prompt": "Improve the response 'Let me think.' given: No progress: compute 3 * 4 first."})
    t.scores[s7]["judge"], t.scores[s8]["judge"] = 0.25, 1.0  # what a refinement search's judge said
    t.info[s7].update(judge_prompt="Does 'Let me think.' answer 'What is 2 + 3 * 4?'",
                      critiques=[{"text": "It computes nothing. Verdict: no", "verdict": False},
                                 {"text": "No progress. Verdict: no", "verdict": False},
                                 {"text": "It thinks. Verdict: yes", "verdict": True},
                                 {"text": "Nothing computed. Verdict: no", "verdict": False}])
    for node, v, times in ((s3, 1.0, 3), (s4, 0.0, 1), (s5, 0.0, 2)):
        for _ in range(times):
            t.backup(node, v)
    t.mc_correct[s1], t.mc_total[s1] = 3, 4
    t.mc_correct[s2], t.mc_total[s2] = 0, 4
    t.scores[s1], t.scores[s2] = {"prm": 0.9}, {"prm": 0.2}
    return t


def _short(value, limit: int = 60):
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 3] + "..."
    if isinstance(value, list):
        return [_short(v, limit) for v in value[:4]] + (["..."] if len(value) > 4 else [])
    if isinstance(value, dict):
        return {k: _short(v, limit) for k, v in value.items()}
    return value


if __name__ == "__main__":
    from treepref.envs.reasoning import plain_template
    from treepref.extract import FORMATS, export

    for fmt in FORMATS:
        try:
            ds, _ = export([example_tree()], fmt, template=plain_template, system=None, recipe="example",
                           **{"step_apo": {"rule": "q_sign", "threshold": 0.5},
                              "refine_pairs": {"value": "reward"}}.get(fmt, {}))
        except ImportError as exc:
            print(f"## {fmt}: unavailable ({exc})\n")
            continue
        print(f"## {fmt}")
        for row in ds.select(range(min(3, len(ds)))):
            print(json.dumps(_short(row), ensure_ascii=False))
        print()
