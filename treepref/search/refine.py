"""SPaR's refinement search (Cheng et al., 2024): judge a response, and refine the ones judged wrong, breadth
first, until a refinement is judged right.

The policy plays three parts: actor (the responses), judge (``judge_k`` sampled critiques per response, each
ending in a yes/no verdict; the value is the share of yes among the parsed verdicts, resampled once on a
tie) and refiner (a response and one negative critique in, an improved response out). A response passes
when its value is above 0.5 (a majority of yes).

Every response, original or refinement, answers the question, so each is a child of the root (its context
is the prompt's ids plus its own, and token-exact exports hold). The refinement tree lives in ``info``:
``refines`` (the node a refinement improves), ``critique`` (the negative critique it was given),
``refine_prompt`` (the refiner prompt as sent) and ``level`` (0 for an original). Judged nodes carry
``scores["judge"]``, ``info["judge"]`` (verdict counts), ``info["critiques"]`` (each critique's text and
verdict) and ``info["judge_prompt"]``; the judge value is also backed up once, so ``Tree.value`` is it.
"""

from __future__ import annotations

from dataclasses import dataclass

from treepref.problems import Problem
from treepref.search import Search
from treepref.search.base import SearchContext, add_step, new_tree, record_generation, settings_of
from treepref.tree import ROOT, Tree
from treepref.verifiers.judge import SCORE_KEY, parse_verdict, passes

JUDGE_TEMPLATE = (
    "You are checking whether a response follows the instructions it was given.\n\n"
    "Instruction:\n{instruction}\n\n"
    "Response:\n{response}\n\n"
    "Check every requirement of the instruction one by one, then end with a line 'Verdict: yes' if the "
    "response follows all instructions or 'Verdict: no' if it does not."
)

REFINE_TEMPLATE = (
    "A response to an instruction was judged not to follow it.\n\n"
    "Instruction:\n{instruction}\n\n"
    "Response:\n{response}\n\n"
    "Critique:\n{critique}\n\n"
    "Write an improved response that follows every instruction. Reply with the response only."
)


@dataclass
class RefineConfig:
    """Settings of :func:`refine`."""

    n_responses: int = 1
    """Original responses sampled from the question (one request)."""
    judge_k: int = 5
    """Critiques sampled per judged response (one request for all the responses judged together)."""
    judge_temperature: float = 0.7
    """Sampling temperature of the critiques."""
    branching: int = 3
    """Refinements sampled (one request) from each kept response."""
    keep_top: int = 2
    """Responses refined per level at most: the best judged of those that failed."""
    max_levels: int = 3
    """Rounds of refinement at most (0: judge the originals only)."""
    max_nodes: int = 32
    """Responses in the tree at most (originals and refinements); later refinements are dropped."""

    def __post_init__(self) -> None:
        for name in ("n_responses", "judge_k", "branching", "keep_top", "max_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"RefineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_levels < 0:
            raise ValueError(f"RefineConfig.max_levels must be >= 0, got {self.max_levels}")
        if self.judge_temperature < 0:
            raise ValueError(f"RefineConfig.judge_temperature must be >= 0, got {self.judge_temperature}")


def judge_prompt(ctx: SearchContext, problem: Problem, response: str) -> str:
    content = JUDGE_TEMPLATE.format(instruction=problem.question, response=response)
    return ctx.policy.chat_prompt([{"role": "user", "content": content}])


def refine_prompt(ctx: SearchContext, problem: Problem, response: str, critique: str) -> str:
    content = REFINE_TEMPLATE.format(instruction=problem.question, response=response, critique=critique)
    return ctx.policy.chat_prompt([{"role": "user", "content": content}])


def judge_value(tree: Tree, node: int) -> float | None:
    """The node's judge value (share of yes among parsed verdicts), None when unjudged or nothing parsed."""
    return tree.scores[node].get(SCORE_KEY)


def passed(tree: Tree, node: int) -> bool:
    return passes(judge_value(tree, node))


def negative_critique(tree: Tree, node: int) -> str | None:
    """The first critique that said no: what the refiner is told is wrong."""
    return next((c["text"] for c in tree.info[node].get("critiques", ()) if c["verdict"] is False), None)


def _counts(critiques: list[dict]) -> dict:
    verdicts = [c["verdict"] for c in critiques]
    return {"yes": verdicts.count(True), "no": verdicts.count(False), "unparsed": verdicts.count(None)}


async def _sample_critiques(tree: Tree, ctx: SearchContext, prompts: list[str], k: int,
                            temperature: float) -> list[list[dict]]:
    params = ctx.sampling.with_(n=k, temperature=temperature, stop=())
    results = await ctx.policy.generate(prompts, params)
    record_generation(tree, results)
    return [[{"text": c.text, "verdict": parse_verdict(c.text)} for c in cs] for cs in results]


async def judge(tree: Tree, problem: Problem, nodes: list[int], ctx: SearchContext, cfg: RefineConfig,
                stats: dict) -> None:
    """Judge ``nodes`` together (one request), then once more for those tied (yes == no, none parsed
    included): a tie says nothing, and ``judge_k`` more verdicts usually break it."""
    if not nodes:
        return
    prompts = [judge_prompt(ctx, problem, tree.text[n]) for n in nodes]
    for n, p, cs in zip(nodes, prompts, await _sample_critiques(tree, ctx, prompts, cfg.judge_k,
                                                                 cfg.judge_temperature)):
        tree.info[n]["judge_prompt"], tree.info[n]["critiques"] = p, cs
    tied = [n for n in nodes if (c := _counts(tree.info[n]["critiques"]))["yes"] == c["no"]]
    if tied:
        more = await _sample_critiques(tree, ctx, [tree.info[n]["judge_prompt"] for n in tied], cfg.judge_k,
                                       cfg.judge_temperature)
        for n, cs in zip(tied, more):
            tree.info[n]["critiques"] = tree.info[n]["critiques"] + cs
        stats["tie_resamples"] += len(tied)
    for n in nodes:
        counts = _counts(tree.info[n]["critiques"])
        tree.info[n]["judge"] = counts
        parsed = counts["yes"] + counts["no"]
        if parsed:
            value = counts["yes"] / parsed
            tree.scores[n][SCORE_KEY] = value
            tree.backup(n, value)
    stats["judged"] += len(nodes)


async def _originals(tree: Tree, states: dict, ctx: SearchContext, cfg: RefineConfig) -> list[int]:
    params = ctx.sampling.with_(n=cfg.n_responses, stop=())
    results = await ctx.policy.generate([ctx.env.render(states[ROOT])], params)
    record_generation(tree, results)
    out = []
    for c in results[0]:
        node = await add_step(tree, states, ROOT, ctx, c.text, c.token_ids, logprob=c.logprob,
                              finish_reason=c.finish_reason, ended=True)
        if node is not None and node not in out:
            tree.info[node]["level"] = 0
            out.append(node)
    return out


async def _refine_level(tree: Tree, states: dict, problem: Problem, ctx: SearchContext, cfg: RefineConfig,
                        kept: list[int], level: int, stats: dict) -> list[int]:
    """``branching`` refinements of each kept node (one request); returns the new nodes (a refinement equal
    to a response already in the tree merges into it and adds nothing)."""
    critiques = [negative_critique(tree, n) for n in kept]
    prompts = [refine_prompt(ctx, problem, tree.text[n], c) for n, c in zip(kept, critiques)]
    results = await ctx.policy.generate(prompts, ctx.sampling.with_(n=cfg.branching, stop=()))
    record_generation(tree, results)
    new = []
    for n, critique, prompt, cs in zip(kept, critiques, prompts, results):
        for c in cs:
            if len(tree) - 1 >= cfg.max_nodes:
                stats["dropped"] += 1
                continue
            size = len(tree)
            node = await add_step(tree, states, ROOT, ctx, c.text, c.token_ids, logprob=c.logprob,
                                  finish_reason=c.finish_reason, ended=True)
            if node is None or len(tree) == size:
                stats["merged"] += 1
                continue
            tree.info[node].update(refines=n, critique=critique, refine_prompt=prompt, level=level)
            new.append(node)
    stats["refinements"] += len(new)
    return new


def _ranked(tree: Tree, nodes: list[int]) -> list[int]:
    """Best judged first (unjudged last), ties to the node made first."""
    return sorted(nodes, key=lambda n: (-(judge_value(tree, n) if judge_value(tree, n) is not None else -1.0), n))


async def refine(problem: Problem, ctx: SearchContext, cfg: RefineConfig | None = None) -> Tree:
    """Run SPaR's breadth-first refinement on ``problem``.

    The originals judged wrong are refined, the ``keep_top`` best of each level, until a refinement passes.
    An original that passes needs no refinement but does not stop the others' (each failing original is
    what a refinement pair needs). ``tree.meta["stats"]``: ``passed`` (the first refinement to pass, the
    best judged of its level; None if none did), ``passed_originals``, and counts; ``tree.meta["kept"]``:
    the nodes refined at each level."""
    cfg = cfg or RefineConfig()
    tree, states = new_tree(problem, ctx, "refine", settings_of(cfg))
    stats = {"levels": 0, "passed": None, "refinements": 0, "merged": 0, "dropped": 0, "judged": 0,
             "tie_resamples": 0, "no_critique": 0}
    originals = await _originals(tree, states, ctx, cfg)
    await judge(tree, problem, originals, ctx, cfg, stats)
    stats["passed_originals"] = [n for n in originals if passed(tree, n)]
    frontier = [n for n in originals if not passed(tree, n)]
    history: list[list[int]] = []
    while frontier and stats["levels"] < cfg.max_levels and len(tree) - 1 < cfg.max_nodes:
        refinable = [n for n in frontier if negative_critique(tree, n) is not None]
        stats["no_critique"] += len(frontier) - len(refinable)
        kept = _ranked(tree, refinable)[: cfg.keep_top]
        if not kept:
            break
        history.append(kept)
        stats["levels"] += 1
        frontier = await _refine_level(tree, states, problem, ctx, cfg, kept, stats["levels"], stats)
        await judge(tree, problem, frontier, ctx, cfg, stats)
        winners = [n for n in _ranked(tree, frontier) if passed(tree, n)]
        if winners:
            stats["passed"] = winners[0]
            break
    tree.meta["kept"] = history
    tree.meta["stats"] = stats
    return tree


SEARCH = Search(refine, RefineConfig)  # what treepref.search registers as "refine"
