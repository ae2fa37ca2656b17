"""PAV bench (issue 28): on held-out arithmetic, beam search against a trained process advantage verifier (PAV)
vs beam search against an outcome verifier (ORM) vs flat sampling picked by majority vote, the ORM or the PAV,
at equal generated tokens.

1. Training data, on ``--train-problems`` problems (``--train-seed``): configs/pav.yaml's search (beam valued by
   the prover's completions, advantages A = V(after) - V(before)) gives the PAV's stepwise rows; flat sampling
   (``sample``, ``--orm-samples`` whole solutions a problem) gives the ORM's rows: stepwise with ``value:
   outcome``, every step labelled by whether its solution ended right (the outcome baseline of Tree-PLV and of
   the PAV paper). Both run with the step check, so a solution cut at a false step counts wrong.
2. Training (``treepref.train``): configs/train-pav.yaml and configs/train-prm.yaml (the ORM: the stepwise PRM
   on outcome labels, read at the last step), each ``--train-steps`` steps with LoRA on the top
   ``--lora-layers`` layers.
3. Held out, per seed (``--heldout-problems`` problems, seed ``--heldout-seed`` + i; their prompts are checked
   disjoint from the training ones): beam search valued by the PAV (``evaluator: {kind: pav}``), the same beam
   valued by the ORM (``kind: prm``, ``aggregate: last``), and flat sampling cut problem by problem to the PAV
   beam's spent tokens (``search.sample.first_solutions``). No step check on held-out problems (it would be an exact
   arithmetic oracle): a search sees only its verifier. Each arm answers with one of its finished solutions,
   picked without the answer key: the highest PAV value (its advantages summed along the path: the progress
   from the prompt), the highest ORM score, or the majority answer. The exact checker grades the pick.

Reported: accuracy with Wilson 95% intervals pooled over seeds, tokens per problem, the oracle (any finished
solution right) and each arm's paired difference from flat majority vote with a bootstrap 95% interval over
problems.

    .venv/bin/python bench/pav.py                  # the committed run: bench/results/pav.{md,json}
    .venv/bin/python bench/pav.py --train-problems 4 --heldout-problems 4 --seeds 1 --train-steps 2 \\
        --work /tmp/pav-work --out /tmp/pav-tiny   # the harness end to end in a few minutes

Run folders and trained models are kept in ``--work`` (default ``bench/work/pav``, ignored by git): a rerun
resumes searches and reuses the trained models. With ``--backend vllm`` every search of a phase runs in this
process's engine (spawned on CPU machines, hence the ``__main__`` guard).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

import treepref  # noqa: E402
from treepref.extract.common import problem_of  # noqa: E402
from treepref.search.base import succeeded  # noqa: E402
from treepref.search.sample import first_solutions  # noqa: E402
from treepref.train.evaluate import accuracy, majority  # noqa: E402
from treepref.models import resolve_model  # noqa: E402
from treepref.tree import ROOT, atomic_write_text  # noqa: E402
from usefulness import Work, held_out, lora_options, paired_difference  # noqa: E402  (bench/: shared helpers)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ARMS = ("beam+pav", "beam+orm", "flat+majority", "flat+orm", "flat+pav")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--difficulty", type=int, default=2, help="operations per problem (2: room above majority vote)")
    ap.add_argument("--train-problems", type=int, default=24)
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--orm-samples", type=int, default=8, help="flat solutions a training problem for the ORM")
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-layers", type=int, default=8, help="LoRA on the top this many layers (0: all)")
    ap.add_argument("--heldout-problems", type=int, default=48)
    ap.add_argument("--heldout-seed", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=2, help="held-out problem sets")
    ap.add_argument("--beam-width", type=int, default=2)
    ap.add_argument("--k", type=int, default=4, help="steps sampled from each beam a round")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--work", default=str(Path(__file__).parent / "work" / "pav"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "pav"))
    return ap.parse_args(argv)


# -- recipes ------------------------------------------------------------------------------------------------------
def base_recipe(args, problems: dict, search: dict, extract: dict, output: Path, step_check: bool) -> dict:
    """configs/pav.yaml's model, env and sampling on ``problems`` (a recipe's section); the given search and
    exports."""
    pav = yaml.safe_load((CONFIGS / "pav.yaml").read_text())
    d = args.difficulty
    env = {**pav["env"], "max_depth": d + 3, "few_shot": f"arithmetic:{d}"}
    if not step_check:
        env.pop("step_check", None)
    model = {"name": None, "backend": args.backend}
    if args.backend == "vllm":
        model["options"] = {"max_model_len": 2048, "cpu_kv_cache_gib": 2}
    return {"model": model,
            "problems": problems,
            "env": env, "sampling": {**pav["sampling"], "rollout_max_tokens": 64 * d},
            "search": search, "extract": extract, "run": {"output": str(output), "concurrency": 8}}


def arithmetic(args, count: int, seed: int) -> dict:
    return {"source": "arithmetic", "options": {"count": count, "seed": seed, "difficulty": args.difficulty}}


def held_out_problems(args, seed: int, exclude: set, path: Path) -> dict:
    """A problems section for ``--heldout-problems`` arithmetic problems of ``seed`` whose prompts are not in
    ``exclude`` (one operation has few distinct problems: a held-out seed repeats training prompts), written once
    to ``path`` (JSONL) so a rerun searches the same ones."""
    if not path.exists():
        rows = [{"id": p.id, "prompt": p.prompt, "answer": p.answer, "meta": p.meta}
                for p in held_out(args.heldout_problems, seed, args.difficulty, exclude)]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return {"source": "file", "options": {"path": str(path)}}


def generate(recipe: dict) -> list:
    """Search a recipe (resuming its run folder) and return its trees, in problem order."""
    run = treepref.generate(recipe, allow_failures=False)
    return sorted(run.trees(), key=lambda t: t.problem_id)


def trained(recipe: str, data: Path, out: Path, args, **overrides) -> tuple[str, dict]:
    """A trained model folder (reused when ``out`` already holds one) and its summary."""
    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        return summary["model"], summary
    summary = treepref.train(CONFIGS / recipe, out, overrides={
        "data": str(data), "train.max_steps": args.train_steps, "train.lora": lora_options(args, resolve_model()),
        "train.progress": False, **overrides})
    return summary["model"], summary


# -- picking and grading ------------------------------------------------------------------------------------------
def finished(tree, nodes=None) -> list[int]:
    """The nodes that ended a solution with an answer (a beam's final steps, a flat cut's solutions)."""
    nodes = range(1, len(tree)) if nodes is None else nodes
    return [n for n in nodes if n != ROOT and tree.terminated[n]]


def path_scores(scorer, tree, nodes: list[int]) -> list[list[float]]:
    """A stepwise scorer's (PAV's or ORM's) score of every step on each node's path, on the tree's own ids."""
    question = problem_of(tree).question
    return scorer.score_many([scorer.row(tree.token_ids[ROOT], [tree.token_ids[i] for i in tree.path(n)], question)
                              for n in nodes])


def pav_value(pav, tree, nodes: list[int]) -> list[float]:
    """The PAV's advantages summed along each node's path: its estimate of V(node) - V(prompt)."""
    return [sum(r) for r in path_scores(pav, tree, nodes)]


def orm_value(orm, tree, nodes: list[int]) -> list[float]:
    """The ORM's score at each solution's last step: its estimate that the whole solution is right."""
    return [r[-1] for r in path_scores(orm, tree, nodes)]


def pick(tree, nodes: list[int], how: str, pav, orm) -> int | None:
    """One of ``nodes`` (finished solutions), by the highest PAV or ORM value or by majority vote; None if none."""
    if not nodes:
        return None
    if how == "majority":
        votes = [SimpleNamespace(answer=tree.info[n].get("answer"), node=n) for n in nodes]
        return majority(votes).node
    values = pav_value(pav, tree, nodes) if how == "pav" else orm_value(orm, tree, nodes)
    return nodes[max(range(len(nodes)), key=lambda i: (values[i], -i))]  # ties: the earliest


def grade(tree, node: int | None) -> bool:
    return node is not None and succeeded(tree, node)


# -- the run ------------------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    args = parse_args(argv)
    cache, out = Work(Path(args.work)), Path(args.out)  # a phase keeps the time it took when it first ran
    work, phase, timing = cache.folder, cache.phase, cache.timing
    pav_cfg = yaml.safe_load((CONFIGS / "pav.yaml").read_text())

    # 1. training data
    train = arithmetic(args, args.train_problems, args.train_seed)
    pav_search = {**pav_cfg["search"], "options": {**pav_cfg["search"]["options"], "max_depth": args.difficulty + 2}}
    pav_trees = phase("pav_data", lambda: generate(base_recipe(
        args, train, search=pav_search, extract=pav_cfg["extract"], output=work / "pav-data", step_check=True)))
    orm_trees = phase("orm_data", lambda: generate(base_recipe(
        args, train, search={"name": "sample", "options": {"n": args.orm_samples}},
        extract={"formats": ["stepwise"], "value": "outcome"}, output=work / "orm-data", step_check=True)))

    # 2. training
    pav_model, pav_summary = phase("train_pav", lambda: trained("train-pav.yaml", work / "pav-data",
                                                                 work / "pav-model", args))
    orm_model, orm_summary = phase("train_orm", lambda: trained("train-prm.yaml", work / "orm-data",
                                                                 work / "orm-model", args))
    from treepref.verifiers.trained import load_trained

    pav, orm = load_trained(pav_model), load_trained(orm_model)

    # 3. held out
    seen = {t.prompt for t in pav_trees} | {t.prompt for t in orm_trees}
    beam = {"beam_width": args.beam_width, "k": args.k, "max_depth": args.difficulty + 2}
    outcomes: dict[str, list[bool]] = {arm: [] for arm in (*ARMS, "flat oracle", "beam+pav oracle")}
    tokens: dict[str, list[int]] = {"beam+pav": [], "beam+orm": [], "flat": []}
    per_seed, problems = [], []
    for i in range(args.seeds):
        seed = args.heldout_seed + i
        folder = work / f"heldout-{seed}"
        held = held_out_problems(args, seed, seen, folder / "problems.jsonl")

        def arm(name: str, search: dict) -> list:
            return generate(base_recipe(args, held, search=search, extract={"formats": ["trees"]},
                                        output=folder / name, step_check=False))

        by_pav = phase(f"beam_pav_{seed}", lambda: arm("beam-pav", {"name": "beam", "options": {
            **beam, "evaluator": {"kind": "pav", "model": pav_model, "aggregate": "sum"}}}))
        assert not seen & {t.prompt for t in by_pav}, "held-out prompts must not repeat training ones"
        by_orm = phase(f"beam_orm_{seed}", lambda: arm("beam-orm", {"name": "beam", "options": {
            **beam, "evaluator": {"kind": "prm", "model": orm_model, "aggregate": "last"}}}))
        most = max(t.meta["generated_tokens"] for t in by_pav)
        flat = phase(f"flat_{seed}", lambda: arm("flat", {"name": "sample", "options": {
            "n": 4, "token_budget": int(1.2 * most) + 1}}))
        seed_out = {arm_name: 0 for arm_name in outcomes}
        t_pick = time.time()
        for tp, to, tf in zip(by_pav, by_orm, flat):
            assert tp.problem_id == to.problem_id == tf.problem_id
            cut = first_solutions(tf, tp.meta["generated_tokens"])
            flat_nodes = finished(cut, [leaf for leaf, _, _ in cut.meta["solutions"]])
            flat_right = sum(grade(cut, n) for n in flat_nodes)
            got = {"beam+pav": grade(tp, pick(tp, finished(tp), "pav", pav, orm)),
                   "beam+orm": grade(to, pick(to, finished(to), "orm", pav, orm)),
                   "flat+majority": grade(cut, pick(cut, flat_nodes, "majority", pav, orm)),
                   "flat+orm": grade(cut, pick(cut, flat_nodes, "orm", pav, orm)),
                   "flat+pav": grade(cut, pick(cut, flat_nodes, "pav", pav, orm)),
                   "flat oracle": any(grade(cut, n) for n in flat_nodes),
                   "beam+pav oracle": any(grade(tp, n) for n in finished(tp))}
            for name, ok in got.items():
                outcomes[name].append(ok)
                seed_out[name] += ok
            tokens["beam+pav"].append(tp.meta["generated_tokens"])
            tokens["beam+orm"].append(to.meta["generated_tokens"])
            tokens["flat"].append(cut.meta["generated_tokens"])
            problems.append({"seed": seed, "problem_id": tp.problem_id, "correct": got,
                             "flat_solutions": len(flat_nodes), "flat_right": flat_right,
                             "finished": {"beam+pav": len(finished(tp)), "beam+orm": len(finished(to))},
                             "tokens": {"beam+pav": tp.meta["generated_tokens"],
                                        "beam+orm": to.meta["generated_tokens"], "flat": cut.meta["generated_tokens"]}})
        timing[f"pick_{seed}"] = round(time.time() - t_pick, 1)
        per_seed.append({"seed": seed, "problems": len(by_pav), "correct": seed_out})

    rng = random.Random(0)
    rows = []
    for name, oks in outcomes.items():
        row = {"arm": name, **accuracy(sum(oks), len(oks))}
        if name != "flat+majority":
            row["vs_flat_majority"] = paired_difference(oks, outcomes["flat+majority"], args.bootstrap, rng)
        source = "flat" if name.startswith("flat") else name.replace(" oracle", "")
        row["tokens_per_problem"] = round(sum(tokens[source]) / max(len(tokens[source]), 1), 1)
        rows.append(row)
    # the verifiers against each other on the same problems, and what a pick at random among flat's would get
    versus = {f"{a} - {b}": paired_difference(outcomes[a], outcomes[b], args.bootstrap, rng)
              for a, b in (("beam+pav", "beam+orm"), ("flat+pav", "flat+orm"), ("beam+pav", "flat+pav"))}
    shares = [p["flat_right"] / p["flat_solutions"] for p in problems if p["flat_solutions"]]
    random_pick = {"accuracy": round(sum(shares) / max(len(problems), 1), 4),
                   "flat_solutions_per_problem": round(sum(p["flat_solutions"] for p in problems)
                                                       / max(len(problems), 1), 2)}
    result = {"table": rows, "versus": versus, "flat_random_pick": random_pick, "per_seed": per_seed,
              "problems": problems, "timing_s": {**timing, "total": round(sum(timing.values()), 1)},
              "meta": {"command": "python bench/pav.py " + " ".join(sys.argv[1:] if argv is None else argv),
                       "args": vars(args), "machine": platform.platform(), "date": time.strftime("%Y-%m-%d"),
                       "pav_train": {k: pav_summary.get(k) for k in ("examples", "steps", "train_loss",
                                                                      "skipped_steps")},
                       "orm_train": {k: orm_summary.get(k) for k in ("examples", "steps", "train_loss")}}}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1))
    atomic_write_text(out.with_suffix(".md"), report(result))
    print(report(result))


def report(result: dict) -> str:
    meta, a = result["meta"], result["meta"]["args"]
    lines = [f"# PAV bench: beam search against a PAV vs an outcome verifier vs majority vote ({meta['date']})", "",
             f"`{meta['command']}` on {meta['machine']}; {result['timing_s']['total'] / 60:.1f} min.", "",
             f"Arithmetic at difficulty {a['difficulty']}; {a['heldout_problems']} held-out problems x {a['seeds']} "
             f"seeds; beam width {a['beam_width']}, k {a['k']}; flat sampling cut problem by problem to the PAV "
             f"beam's spent tokens. PAV: {meta['pav_train']}; ORM: {meta['orm_train']}.", "",
             "| arm | correct | accuracy [95%] | minus flat majority [95%] | tokens / problem |",
             "|---|---|---|---|---|"]
    for r in result["table"]:
        diff = r.get("vs_flat_majority")
        d = f"{diff['difference']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]" if diff else "-"
        lines.append(f"| {r['arm']} | {r['correct']}/{r['n']} | {r['accuracy']:.3f} [{r['ci95'][0]:.3f}, "
                     f"{r['ci95'][1]:.3f}] | {d} | {r['tokens_per_problem']} |")
    lines += ["", "Paired on the same problems (bootstrap 95% over problems):", ""]
    for name, diff in result["versus"].items():
        lines.append(f"- {name}: {diff['difference']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]")
    rp = result["flat_random_pick"]
    lines += ["", f"A pick at random among flat's finished solutions ({rp['flat_solutions_per_problem']} a problem) "
              f"would be right {rp['accuracy']:.3f} of the time.", "",
              "Time per phase (s; a search or training cached in `--work` counts the time it took when it ran): "
              + ", ".join(f"{k} {v}" for k, v in result["timing_s"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
