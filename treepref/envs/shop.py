"""A small WebShop-like store that runs offline: search the catalogue, open items, pick options, buy.

The catalogue and goals are synthetic and ship with the package (``treepref/data/shop/``, made by
``scripts/make_shop_data.py``), so a multi-turn agent task needs no server, browser or download. Pages and
actions follow WebShop (Yao et al., 2022): ``search[query]`` on the search page; ``click[...]`` on a result's
id, ``next >``, ``< prev``, ``back to search``, an option value, or ``buy now``. Search is BM25 over each
product's title, category and attributes. Every observation ends with the actions valid on that page; an
invalid action changes nothing and says so.

Reward is given only at ``buy now`` and is WebShop's attribute/option/price score without its title and
type terms: (required attributes the bought product has + required options chosen + [price <= limit]) /
(#attributes + #options + 1). It judges the bought product, not the target, so a different product that
fits the goal scores as well; ``info["success"]`` is True only for a full score.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from treepref.envs.agent import AgentEnv, Outcome
from treepref.problems import Problem

DATA = Path(__file__).resolve().parent.parent / "data" / "shop"

DEFAULT_SYSTEM = (
    "You are shopping in an online store for the user. Write exactly one action per line: "
    "search[query] on the search page, or click[target] with a target from the page's list of actions "
    "(a product id, an option value, next >, < prev, back to search, buy now). "
    "Find the product that matches the request, choose its options, then click[buy now].")


@dataclass(frozen=True)
class Product:
    asin: str
    title: str
    category: str
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]  # (option name, its values), in listing order
    price: float


@dataclass(frozen=True)
class Goal:
    """What the user asked for (hashable, so it can live inside the immutable page state)."""

    id: str
    asin: str  # the product the goal was written from
    attributes: tuple[str, ...]
    options: tuple[tuple[str, str], ...]  # (option name, required value), sorted by name
    price_upper: float

    @classmethod
    def from_dict(cls, d: dict) -> Goal:
        return cls(str(d["id"]), d["asin"], tuple(d["attributes"]), tuple(sorted(d["options"].items())),
                   float(d["price_upper"]))


@dataclass(frozen=True)
class Page:
    """Where the shopper is: the page kind and just enough to redraw it. ``chosen`` is sorted by name."""

    goal: Goal
    kind: str = "search"  # "search" | "results" | "item" | "done" (bought)
    query: str = ""
    page: int = 1
    asin: str = ""
    chosen: tuple[tuple[str, str], ...] = ()


# -- the catalogue and its search index (read once per process) -------------------------------------

def _tokens(text: str) -> list[str]:
    """Lower-case words with a plural "s" dropped, so "jackets" finds "jacket" (and "glass" stays)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words]


@lru_cache(maxsize=None)
def products() -> tuple[Product, ...]:
    """The catalogue, in file order."""
    out = []
    for line in (DATA / "products.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(Product(d["asin"], d["title"], d["category"], tuple(d["attributes"]),
                               tuple((k, tuple(v)) for k, v in d["options"].items()), float(d["price"])))
    return tuple(out)


@lru_cache(maxsize=None)
def _by_asin() -> dict[str, Product]:
    return {p.asin: p for p in products()}


def product(asin: str) -> Product:
    return _by_asin()[asin]


@lru_cache(maxsize=None)
def _index():
    from rank_bm25 import BM25Okapi

    return BM25Okapi([_tokens(" ".join((p.title, p.category, *p.attributes))) for p in products()])


@lru_cache(maxsize=4096)
def search(query: str) -> tuple[str, ...]:
    """Asins of every product sharing a word with ``query``, best BM25 score first (ties: file order)."""
    words = _tokens(query)
    if not words:
        return ()
    scores = _index().get_scores(words)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    catalogue = products()
    return tuple(catalogue[i].asin for i in order if scores[i] > 0)


def score(goal: Goal, bought: Product, chosen: tuple[tuple[str, str], ...]) -> tuple[float, dict]:
    """The reward of buying ``bought`` with ``chosen`` options, and the counts behind it."""
    picked = dict(chosen)
    attrs = sum(a in bought.attributes for a in goal.attributes)
    opts = sum(picked.get(name) == value for name, value in goal.options)
    price_ok = bought.price <= goal.price_upper
    reward = (attrs + opts + int(price_ok)) / (len(goal.attributes) + len(goal.options) + 1)
    return reward, {"success": reward == 1.0, "asin": bought.asin, "target": goal.asin,
                    "attribute_matches": attrs, "option_matches": opts, "price_ok": price_ok}


def load_goals(count: int | None = None, seed: int = 0, skip: int = 0) -> list[Problem]:
    """The shipped goals as Problems (``meta["goal"]`` holds the goal's record).

    ``seed=0`` keeps file order; any other seed shuffles with ``random.Random(seed)``. ``skip`` then leaves out
    the first ``skip`` goals (held-out goals: ``skip`` = the ``count`` another recipe took at the same seed) and
    ``count`` keeps the first ``count`` of the rest, so the same (count, seed, skip) always gives the same problems.
    """
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
    rows = [json.loads(line) for line in (DATA / "goals.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    if seed:
        random.Random(seed).shuffle(rows)
    rows = rows[skip:]
    if count is not None:
        rows = rows[:count]
    return [Problem(id=r["id"], prompt=r["instruction"], answer=None, meta={"goal": r}) for r in rows]


@lru_cache(maxsize=1)
def _demo_goals() -> tuple[Problem, ...]:
    """Two goals (from the end of the file) whose target is on the first page of its instruction's search."""
    goals = [g for g in reversed(load_goals()) if g.meta["goal"]["asin"] in search(g.prompt)[:3]]
    return tuple(goals[:2])


# -- the environment --------------------------------------------------------------------------------

def _key(label: str) -> str:
    """How a click target is compared: case and whitespace ignored."""
    return re.sub(r"\s+", "", label).lower()


_ACTION = re.compile(r"(?:action\s*:\s*)?(search|click)\s*\[(.*)\]", re.IGNORECASE | re.DOTALL)


@dataclass
class ShopEnv(AgentEnv):
    """The store as an agent environment: ``data`` is a :class:`Page`; reward only at ``buy now``.

    ``results_per_page`` results are shown per page, out of the ``max_results`` best matches.
    """

    results_per_page: int = 3
    max_results: int = 30

    name = "shop"
    default_problems = "shop"  # the problems source a recipe naming it gets by default
    interactive = True
    reward_range: tuple[float, float] = (0.0, 1.0)
    default_system: str = DEFAULT_SYSTEM
    stop: tuple[str, ...] = ("\n",)
    lead: str = "Action:"  # no trailing space: the model writes " search[...]" (a space before a word is one token)
    observation_format: str = "Observation: {observation}\n\n"

    def start(self, problem: Problem) -> tuple[Page, str]:
        if "goal" not in problem.meta:
            raise ValueError(f"problem {problem.id!r} has no meta['goal']; shop problems come from load_goals()")
        page = Page(Goal.from_dict(problem.meta["goal"]))
        return page, self.show(page)

    # -- pages ------------------------------------------------------------------------------------
    def hits(self, page: Page) -> tuple[str, ...]:
        return search(page.query)[: self.max_results]

    def n_pages(self, page: Page) -> int:
        return max(1, math.ceil(len(self.hits(page)) / self.results_per_page))

    def shown(self, page: Page) -> tuple[str, ...]:
        start = (page.page - 1) * self.results_per_page
        return self.hits(page)[start:start + self.results_per_page]

    def clicks(self, page: Page) -> list[str]:
        """The click targets on this page, in the order they are listed."""
        if page.kind == "results":
            nav = (["< prev"] if page.page > 1 else []) + (["next >"] if page.page < self.n_pages(page) else [])
            return [*self.shown(page), *nav, "back to search"]
        if page.kind == "item":
            values = [v for _, vs in product(page.asin).options for v in vs]
            return [*values, "buy now", "< prev", "back to search"]
        return []

    def demonstrations(self, problem: Problem) -> list[tuple[Problem, list[str]]]:
        """One worked purchase (search, open the target, choose its options, buy) for a goal that is not
        ``problem``'s: the last shipped goals whose target the instruction's search shows first."""
        demo = next(g for g in _demo_goals() if g.id != problem.id)
        goal = demo.meta["goal"]
        return [(demo, [f" search[{demo.prompt}]", f" click[{goal['asin']}]",
                        *(f" click[{v}]" for v in goal["options"].values()), " click[buy now]"])]

    def sample_actions(self, state) -> list[str]:
        """Valid actions at ``state`` (for ``treepref check-env``): a search for the goal, or every click."""
        page = state.data
        if page.kind == "search":
            return [f"search[{state.problem.question}]", "search[red]"]
        return [f"click[{c}]" for c in self.clicks(page)]

    def action_list(self, page: Page) -> str:
        if page.kind == "search":
            return "search[<your query>]"
        if page.kind == "done":
            return "none (the purchase is complete)"
        return " | ".join(f"click[{c}]" for c in self.clicks(page))

    def show(self, page: Page) -> str:
        """The page as text, then its actions."""
        if page.kind == "search":
            body = "Search page: type what you are looking for."
        elif page.kind == "results":
            hits = self.hits(page)
            if not hits:
                body = f'No products match "{page.query}".'
            else:
                lines = [f'Results for "{page.query}" (page {page.page} of {self.n_pages(page)}, '
                         f"{len(hits)} products):"]
                lines += [f"{a}: {product(a).title} | ${product(a).price:.2f}" for a in self.shown(page)]
                body = "\n".join(lines)
        elif page.kind == "item":
            p, picked = product(page.asin), dict(page.chosen)
            lines = [f"Item {p.asin}: {p.title}", f"Price: ${p.price:.2f}", f"Category: {p.category}",
                     f"Features: {', '.join(p.attributes)}"]
            for name, values in p.options:
                now = f" (chosen: {picked[name]})" if name in picked else ""
                lines.append(f"{name}: {' | '.join(values)}{now}")
            body = "\n".join(lines)
        else:
            body = f"Bought {page.asin}: {product(page.asin).title}."
        return f"{body}\nActions: {self.action_list(page)}"

    # -- actions ----------------------------------------------------------------------------------
    def invalid(self, page: Page, action: str, why: str) -> Outcome:
        return Outcome(page, f"Invalid action: {action} ({why}). Valid actions: {self.action_list(page)}")

    def act(self, data: Page, action: str) -> Outcome:
        page = data
        m = _ACTION.fullmatch(action.strip())
        if page.kind == "done":
            return self.invalid(page, action, "the purchase is complete")
        if not m:
            return self.invalid(page, action, "write search[query] or click[target]")
        verb, arg = m.group(1).lower(), " ".join(m.group(2).split())
        if verb == "search":
            if page.kind != "search":
                return self.invalid(page, action, "search only on the search page; click[back to search] first")
            if not _tokens(arg):
                return self.invalid(page, action, "empty query")
            new = Page(page.goal, "results", query=arg.lower())
            return Outcome(new, self.show(new))
        targets = {_key(c): c for c in self.clicks(page)}
        target = targets.get(_key(arg))
        if target is None:
            return self.invalid(page, action, "not on this page")
        if target == "back to search":
            new = Page(page.goal)
        elif page.kind == "results":
            if target == "next >":
                new = replace(page, page=page.page + 1)
            elif target == "< prev":
                new = replace(page, page=page.page - 1)
            else:
                new = replace(page, kind="item", asin=target, chosen=())
        elif target == "< prev":
            new = replace(page, kind="results", asin="", chosen=())
        elif target == "buy now":
            new = replace(page, kind="done")
            reward, info = score(page.goal, product(page.asin), page.chosen)
            return Outcome(new, self.show(new), reward=reward, terminated=True, info=info)
        else:  # an option value: the first option that has it
            name = next(n for n, vs in product(page.asin).options if target in vs)
            chosen = tuple(sorted({**dict(page.chosen), name: target}.items()))
            new = replace(page, chosen=chosen)
        return Outcome(new, self.show(new))
