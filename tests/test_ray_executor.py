"""The Ray executor on a real local Ray (one cluster for this module, two CPUs): the same trees as the local
runner, a killed actor's problems searched elsewhere with nothing lost or duplicated, failures recorded like the
local runner's, resume, and the hf backend through ``treepref generate``."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from treepref.backends.base import Sampling
from treepref.backends.scripted import EOS, ScriptedPolicy
from treepref.config import RaySection
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.problems import Problem
from treepref.runner import load_trees, run_problems
from treepref.search.base import SearchContext
from treepref.search.mcts import MCTSConfig, mcts


@pytest.fixture(scope="module")
def cluster():
    """One real local Ray for the module. Its workers cannot import this test module, so its functions (the
    factories and searches below) travel by value."""
    ray = pytest.importorskip("ray")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


async def exact(problem, answer):
    return float(answer == problem.answer)


def script(steps):
    """Branches at every depth, and the right answer is only one of the ways, so trees have shape."""
    if len(steps) == 0:
        return [("1 + 1 = 2", -1.0), ("1 + 1 = 3", -2.0), ("Let me think.", -3.0)]
    if len(steps) == 1:
        return ["The answer is 2." + EOS, "The answer is 3." + EOS]
    return ["The answer is 2." + EOS]


def scripted_context() -> SearchContext:
    """The actors' factory: each builds its own scripted policy and environment."""
    env = ReasoningEnv(template=plain_template, verifier=exact, max_depth=4)
    return SearchContext(env=env, policy=ScriptedPolicy(script), sampling=Sampling(max_tokens=16, seed=0))


def problems(n):
    return [Problem(id=f"p/{i}", prompt=f"What is 1 + 1? ({i})", answer="2") for i in range(n)]


CFG = MCTSConfig(simulations=6, k=2)


async def slow_mcts(problem, ctx, cfg):
    """MCTS that takes a while, so searches are in flight when an actor is killed."""
    await asyncio.sleep(0.4)
    return await mcts(problem, ctx, cfg)


async def picky_mcts(run_dir, problem, ctx, cfg):
    """MCTS that raises on p/1 (a search bug) and kills its own actor's process on p/2 (every time), while a
    file ``heal`` in the run folder does not exist."""
    heal = Path(run_dir) / "heal"
    if not heal.exists() and problem.id == "p/1":
        raise RuntimeError("boom on p/1")
    if not heal.exists() and problem.id == "p/2":
        os._exit(1)
    return await mcts(problem, ctx, cfg)


def texts(tree):
    """What a tree holds, without the wall time of its search."""
    data = tree.to_dict()
    data["meta"] = {k: v for k, v in data["meta"].items() if k != "wall_time_s"}
    return data


def local_trees(tmp_path, n):
    out = tmp_path / "local"
    summary = asyncio.run(run_problems(problems(n), mcts, CFG, scripted_context(), out, concurrency=4, progress=False))
    assert summary.searched == n
    return {t.problem_id: texts(t) for t in load_trees(out)}


def test_ray_writes_the_same_trees_as_the_local_runner(cluster, tmp_path):
    expected = local_trees(tmp_path, 8)
    from treepref.executors.ray import run_problems_ray

    out = tmp_path / "ray"
    summary = run_problems_ray(problems(8), mcts, CFG, scripted_context, out, options=RaySection(actors=2),
                               concurrency=8, progress=False)
    assert (summary.searched, summary.failed, summary.resumed, summary.actors) == (8, 0, 0, 2)
    got = {t.problem_id: texts(t) for t in load_trees(out)}
    assert got == expected  # the same files, node for node (texts, ids, visits, values)
    assert len(expected["p/0"]["columns"]["text"]) > 3  # (trees with several branches, not a trivial match)
    assert sorted(p.name for p in (out / "trees").iterdir()) == sorted(p.name for p in (tmp_path / "local" / "trees").iterdir())
    # Load-aware dispatch: either actor has room for all eight, and each problem went to the less busy one.
    assert sorted(summary.per_actor.values()) == [4, 4]


def _kill_when(ray, out: Path, trees: int, name_part: str, timeout_s: float = 300) -> list:
    """Wait until ``trees`` tree files exist, then ray.kill the actor whose name contains ``name_part``."""
    killed = []

    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(list((out / "trees").glob("*.json"))) >= trees:
                names = [n for n in ray.util.list_named_actors() if n.startswith("treepref-") and name_part in n]
                if names:
                    ray.kill(ray.get_actor(names[0]), no_restart=True)
                    killed.append(names[0])
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    killed.append(thread)
    return killed


def test_a_killed_actors_problems_are_searched_elsewhere_and_nothing_is_lost_or_duplicated(cluster, tmp_path):
    from treepref.executors.ray import run_problems_ray

    n = 12
    expected = local_trees(tmp_path, n)
    out = tmp_path / "ray"
    watcher = _kill_when(cluster, out, 2, "-0-0")  # slot 0's first actor, while it has two searches in flight
    summary = run_problems_ray(problems(n), slow_mcts, CFG, scripted_context, out, options=RaySection(actors=2),
                               concurrency=2, progress=False)
    watcher[0].join()
    assert len(watcher) == 2 and watcher[1].endswith("-0-0")  # it did kill one
    assert summary.actor_deaths == 1 and summary.actors == 3  # the dead one was replaced
    assert summary.resubmitted  # it died with problems in flight, and they were sent again
    # Nothing lost: every problem has its tree, and it is the tree the local runner writes (not a half-search).
    assert (summary.searched, summary.failed) == (n, 0)
    assert {t.problem_id: texts(t) for t in load_trees(out)} == expected
    # Nothing duplicated: one file per problem, and each problem was written once (searched counts writes).
    assert len(list((out / "trees").glob("*.json"))) == n and not (out / "errors.jsonl").exists()
    assert sum(summary.per_actor.values()) == n
    assert summary.per_actor[watcher[1]] < n  # the killed actor did not finish everything


def test_failures_are_recorded_like_the_local_runner_and_a_rerun_resumes(cluster, tmp_path):
    from treepref.executors.ray import run_problems_ray

    out = tmp_path / "ray"
    options = RaySection(actors=2, actor_retries=1)
    search = functools.partial(picky_mcts, str(out))

    def run():  # one search in flight per actor, so p/2 takes no other problem down with it
        return run_problems_ray(problems(6), search, CFG, scripted_context, out, options=options, concurrency=1,
                                progress=False)

    summary = run()
    # p/1's search raised: recorded by its actor as the local runner records it. p/2 killed its actor twice
    # (the first try and one retry elsewhere): recorded with reason "actor". The other four are written.
    assert (summary.searched, summary.failed) == (4, 2)
    errors = {e["problem_id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert errors["p/1"]["reason"] == "search" and "boom on p/1" in errors["p/1"]["error"]
    assert errors["p/2"]["reason"] == "actor" and errors["p/2"]["retries"] == 2
    assert errors["p/2"]["error"].startswith("ActorDiedError: ") and "\n" not in errors["p/2"]["error"]
    assert summary.actor_deaths == 2 and summary.resubmitted == ["p/2"]
    assert sorted(t.problem_id for t in load_trees(out)) == ["p/0", "p/3", "p/4", "p/5"]

    # Rerun with the bugs fixed: only the two failed problems are searched.
    (out / "heal").touch()
    (out / "errors.jsonl").unlink()
    again = run()
    assert (again.resumed, again.searched, again.failed) == (4, 2, 0)
    assert sum(again.per_actor.values()) == 2
    # A finished run: nothing to search, so no actor (and no model) is started.
    done = run()
    assert (done.resumed, done.searched, done.actors) == (6, 0, 0)
    assert len(list((out / "trees").glob("*.json"))) == 6


def test_generate_on_ray_with_the_hf_backend_survives_a_killed_actor(cluster, tmp_path, model_dir):
    """Two actors each load SmolLM2-135M on transformers; one is killed after the first tree is written."""
    from treepref.cli import main

    out = tmp_path / "run"
    recipe = tmp_path / "ray-hf.yaml"
    recipe.write_text(f"""
model: {{name: {model_dir}, backend: hf, options: {{num_threads: 1}}}}
problems: {{source: arithmetic, options: {{count: 6, seed: 0, difficulty: 1}}}}
env: {{max_depth: 3, max_tokens: 96}}
sampling: {{temperature: 0.9, max_tokens: 24, rollout_max_tokens: 48, seed: 0}}
search: {{name: sample, options: {{n: 2}}}}
run: {{output: {out}, concurrency: 2, executor: ray, ray: {{actors: 2, start_timeout_s: 300}}}}
""")
    watcher = _kill_when(cluster, out, 1, "-1-1")  # slot 1's first actor
    code = main(["generate", "--config", str(recipe), "--no-extract", "--quiet"])
    watcher[0].join()
    assert code == 0 and len(watcher) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["searched"], summary["failed"], summary["actor_deaths"], summary["executor"]) == (6, 0, 1, "ray")
    trees = load_trees(out)
    assert len(trees) == 6 and len({t.problem_id for t in trees}) == 6
    for tree in trees:  # real generations: two sampled solutions under the root, with their token ids
        assert len(tree.children(0)) >= 1 and all(tree.token_ids[c] for c in tree.children(0))
        assert tree.meta["generated_tokens"] > 0


def test_a_missing_ray_is_one_line(monkeypatch):
    """Without the package, the executor says what to install (checked by hiding the module)."""
    from treepref.executors import MissingExtra, require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtra, match=r"pip install 'treepref\[ray\]'"):
        require_ray()


def noted_build(folder) -> SearchContext:
    """The scripted factory, leaving one file per actor that builds (named by its process id)."""
    (Path(folder) / str(os.getpid())).touch()
    return scripted_context()


def two_builds_only(folder) -> SearchContext:
    """A factory that works in the first two actors and fails in any later one."""
    context = noted_build(folder)
    if len(list(Path(folder).iterdir())) > 2:
        raise OSError("the model's node is gone")
    return context


async def after_the_third_build(folder, problem, ctx, cfg):
    """Slow MCTS whose later problems (p/4 on) wait until a third actor has tried to build, and a second more,
    so the run is still going when the driver learns whether the replacement started (without the wait a fast
    survivor, or a slow replacement on a loaded machine, lets the survivor finish everything first)."""
    if int(problem.id.split("/")[1]) >= 4:
        deadline = time.monotonic() + 120
        while len(list(Path(folder).iterdir())) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
    return await slow_mcts(problem, ctx, cfg)


def test_actors_in_a_placement_group_and_a_replacement_in_the_dead_ones_bundle(cluster, tmp_path):
    """With ``placement``, the two bundles take both of the cluster's CPUs, so the replacement of a killed
    actor can only start in the bundle its predecessor left; the group is removed at the end."""
    from ray.util import placement_group_table

    from treepref.executors.ray import run_problems_ray

    builds, out = tmp_path / "builds", tmp_path / "ray"
    builds.mkdir()
    watcher = _kill_when(cluster, out, 1, "-1-1")
    summary = run_problems_ray(problems(20), functools.partial(after_the_third_build, str(builds)), CFG,
                               functools.partial(noted_build, str(builds)), out,
                               options=RaySection(actors=2, placement="STRICT_PACK"), concurrency=2, progress=False)
    watcher[0].join()
    assert len(watcher) == 2 and (summary.actor_deaths, summary.actors) == (1, 3)
    assert (summary.searched, summary.failed) == (20, 0) and len(load_trees(out)) == 20
    assert summary.per_actor[watcher[1].replace("-1-1", "-1-2")] > 0  # the replacement started, and searched
    assert all(g["state"] == "REMOVED" for g in placement_group_table().values())


def test_a_replacement_that_cannot_start_gets_no_problem_and_the_survivor_finishes(cluster, tmp_path):
    from treepref.executors.ray import run_problems_ray

    builds, out = tmp_path / "builds", tmp_path / "ray"
    builds.mkdir()
    watcher = _kill_when(cluster, out, 1, "-0-0")
    search = functools.partial(after_the_third_build, str(builds))
    summary = run_problems_ray(problems(8), search, CFG, functools.partial(two_builds_only, str(builds)), out,
                               options=RaySection(actors=2), concurrency=2, progress=False)
    watcher[0].join()
    assert len(watcher) == 2 and summary.actors == 3
    assert summary.actor_deaths == 2  # the killed one, and its replacement that could not build
    assert 1 <= len(summary.resubmitted) <= 2  # only what the killed one held: none was sent to the replacement
    assert (summary.searched, summary.failed) == (8, 0)
    replacement = watcher[1].replace("-0-0", "-0-2")
    assert summary.per_actor[replacement] == 0 and summary.per_actor[watcher[1].replace("-0-0", "-1-1")] >= 6


def test_an_actor_that_cannot_build_its_policy_stops_the_run_before_any_problem(cluster, tmp_path):
    from treepref.executors.ray import RayExecutorError, run_problems_ray

    def broken():
        raise FileNotFoundError("no model at /nowhere")

    with pytest.raises(RayExecutorError, match="could not build its policy: .*no model at /nowhere"):
        run_problems_ray(problems(3), mcts, CFG, broken, tmp_path, options=RaySection(actors=2), progress=False)
    assert not list((tmp_path / "trees").glob("*.json")) and not (tmp_path / "errors.jsonl").exists()
    assert not [n for n in cluster.util.list_named_actors() if n.startswith("treepref-")]  # none left behind


def test_generate_without_ray_is_one_line_and_touches_nothing(tmp_path, model_dir, monkeypatch, capsys):
    from treepref.cli import main

    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: {model_dir}, backend: hf}}\nrun: {{output: {out}, executor: ray}}\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert main(["generate", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["treepref: generate error: run.executor: ray needs the ray package: pip install 'treepref[ray]' "
                   "(or pip install 'ray>=2.9')"]
    assert not out.exists()


def test_generate_asking_for_gpus_the_cluster_lacks_fails_in_one_line(cluster, tmp_path, model_dir, capfd):
    from treepref.cli import main

    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: {model_dir}, backend: hf}}\nproblems: {{options: {{count: 2}}}}\n"
                      f"run: {{output: {out}, executor: ray, ray: {{actors: 2, num_gpus: 1, start_timeout_s: 3}}}}\n")
    assert main(["generate", "--config", str(recipe), "--no-extract", "--quiet"]) == 1
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("treepref: ray executor")]
    assert len(err) == 1 and "2 actors of 1 CPU, 1 GPU not started within 3 s; the cluster has" in err[0]
    assert not list((out / "trees").glob("*.json"))
    assert not [n for n in cluster.util.list_named_actors() if n.startswith("treepref-")]


async def noting_mcts(problem, ctx, cfg):
    """MCTS that notes in its tree where the runner told it to checkpoint."""
    tree = await mcts(problem, ctx, cfg)
    tree.meta["checkpoint_at"] = str(ctx.checkpoint.path) if ctx.checkpoint is not None else None
    return tree


def test_actors_on_the_drivers_machine_checkpoint_into_the_run_folder(cluster, tmp_path):
    """On one machine the actors get the local runner's checkpoint paths, so a long search of a dead actor
    resumes mid-way on the next one; the driver removes each checkpoint when it writes the tree."""
    from treepref.executors.ray import run_problems_ray
    from treepref.runner import checkpoint_path

    cfg = MCTSConfig(simulations=6, k=2, checkpoint_every=2)
    local = tmp_path / "local"
    asyncio.run(run_problems(problems(4), mcts, cfg, scripted_context(), local, concurrency=4, progress=False))
    expected = {t.problem_id: texts(t) for t in load_trees(local)}
    out = tmp_path / "ray"
    summary = run_problems_ray(problems(4), noting_mcts, cfg, scripted_context, out, options=RaySection(actors=2),
                               concurrency=2, progress=False)
    assert summary.searched == 4
    trees = load_trees(out)
    assert [t.meta.pop("checkpoint_at") for t in trees] == [str(checkpoint_path(out, t.problem_id)) for t in trees]
    assert {t.problem_id: texts(t) for t in trees} == expected
    # The actors saved checkpoints there (the folder is theirs), and none is left once the trees are written.
    assert (out / "checkpoints").is_dir() and not list((out / "checkpoints").iterdir())
