"""The offline shop: rewards by hand, invalid actions, paging, search quality, purity, and an MCTS run."""

from __future__ import annotations

import asyncio
import json

import pytest

from treepref.backends.scripted import ScriptedPolicy
from treepref.envs.shop import DATA, ShopEnv, load_goals, product, products, search
from treepref.search.base import SearchContext
from treepref.search.mcts import MCTSConfig, mcts

GOALS = {p.id: p for p in load_goals()}
# shop-000: waterproof + zip pockets rain jacket, size s, under $80; its target is B0M3XG ($65.57, has size s).
G0 = GOALS["shop-000"]
# shop-005: breathable + wrinkle free polo shirt, white and size m, under $70; target B0QHGT ($40.70).
G5 = GOALS["shop-005"]


def play(env: ShopEnv, problem, actions: list[str]):
    """Step through ``actions`` from the start; return every transition."""
    async def go():
        state, out = env.initial(problem), []
        for a in actions:
            tr = await env.step(state, a)
            out.append(tr)
            state = tr.state
        return out
    return asyncio.run(go())


def buy(problem, query: str, asin: str, options: list[str] = ()):
    """Search, page on to ``asin`` (3 results a page), open it, choose ``options``, buy."""
    pages = search(query).index(asin) // 3
    trs = play(ShopEnv(), problem, [f"search[{query}]", *["click[next >]"] * pages, f"click[{asin}]",
                                    *[f"click[{o}]" for o in options], "click[buy now]"])
    assert all(not t.terminated for t in trs[:-1])
    return trs[-1]


# -- data -----------------------------------------------------------------------------------------

def test_data_is_small_and_consistent():
    assert (DATA / "products.jsonl").stat().st_size + (DATA / "goals.jsonl").stat().st_size < 300_000
    assert len(products()) >= 300 and len(GOALS) == 100
    asins = {p.asin for p in products()}
    assert len(asins) == len(products())
    assert len({p.category for p in products()}) == 8
    for p in products():  # an option value names one option only, so click[value] is unambiguous
        values = [v for _, vs in p.options for v in vs]
        assert len(values) == len(set(values))
    for g in (p.meta["goal"] for p in GOALS.values()):  # the target satisfies its goal
        t = product(g["asin"])
        assert set(g["attributes"]) <= set(t.attributes) and t.price <= g["price_upper"]
        assert all(v in dict(t.options)[n] for n, v in g["options"].items())


def test_loading_is_deterministic():
    first = load_goals()
    assert [p.id for p in first] == [f"shop-{i:03d}" for i in range(100)]  # seed 0: file order
    assert load_goals() == first
    assert load_goals(5, seed=3) == load_goals(5, seed=3)
    assert [p.id for p in load_goals(5, seed=3)] != [p.id for p in first[:5]]
    assert load_goals(10) == first[:10]
    p = first[0]
    assert p.prompt == p.meta["goal"]["instruction"] and p.answer is None


# -- rewards --------------------------------------------------------------------------------------

def test_a_perfect_buy_scores_one():
    tr = buy(G0, "waterproof zip pockets rain jacket", "B0M3XG", ["s"])
    assert tr.terminated and not tr.truncated and tr.reward == 1.0
    assert tr.info["success"] is True and tr.info["asin"] == "B0M3XG"
    tr = buy(G5, "wrinkle free polo shirt", "B0QHGT", ["white", "m"])
    assert tr.reward == 1.0 and tr.info["success"] is True


def test_partial_buys_score_by_the_formula():
    # shop-000: 2 attributes + 1 option + price = 4 parts
    wrong_size = buy(G0, "waterproof zip pockets rain jacket", "B0M3XG", ["m"])
    assert wrong_size.reward == 3 / 4 and wrong_size.info["option_matches"] == 0
    assert wrong_size.info["success"] is False
    assert buy(G0, "waterproof zip pockets rain jacket", "B0M3XG").reward == 3 / 4  # no size chosen
    # B09X6Q: waterproof, zip pockets, has size s, but $158.42 > $80
    over = buy(G0, "waterproof zip pockets rain jacket", "B09X6Q", ["s"])
    assert over.reward == 3 / 4 and over.info["price_ok"] is False and over.info["attribute_matches"] == 2
    # B0H0EM: zip pockets but not waterproof, $42.31; no size chosen
    assert buy(G0, "waterproof zip pockets rain jacket", "B0H0EM").reward == 2 / 4
    # a mug: no jacket attributes, no size option, but under $80 (mugs cost at most $35)
    mug = search("ceramic coffee mug")[0]
    assert product(mug).category == "mugs"
    assert buy(G0, "ceramic coffee mug", mug).reward == 1 / 4
    # shop-005: 2 attributes + 2 options + price = 5 parts; one option right, the other not chosen / wrong
    assert buy(G5, "wrinkle free polo shirt", "B0QHGT", ["white"]).reward == 4 / 5
    assert buy(G5, "wrinkle free polo shirt", "B0QHGT", ["blue", "m"]).reward == 4 / 5
    # a later option click replaces the earlier choice of the same option
    assert buy(G5, "wrinkle free polo shirt", "B0QHGT", ["blue", "m", "white"]).reward == 1.0


# -- actions and pages ----------------------------------------------------------------------------

def test_invalid_actions_change_nothing_and_say_so():
    env = ShopEnv()
    start = env.initial(G0)
    for bad in ["click[buy now]", "buy it", "search[]", "search[   ]"]:
        tr = asyncio.run(env.step(start, bad))
        assert tr.state.data == start.data and tr.reward is None
        assert not tr.terminated and not tr.truncated
        assert tr.info["observation"].startswith("Invalid action:")
        assert "Valid actions: search[" in tr.info["observation"]
    results = play(env, G0, ["search[rain jacket]"])[-1].state
    for bad in ["search[mug]", "click[B0ZZZZ]", "click[< prev]", "click[buy now]", "click[s]"]:
        tr = asyncio.run(env.step(results, bad))
        assert tr.state.data == results.data and tr.reward is None and not tr.terminated
        assert "Invalid action:" in tr.info["observation"] and "click[next >]" in tr.info["observation"]


def test_matching_ignores_case_and_whitespace():
    assert "B0M3XG" in search("waterproof zip pockets rain jacket")[:3]
    trs = play(ShopEnv(), G0, ["Search[ Waterproof  Zip Pockets\tRain Jacket ]", "CLICK[ b0m3xg ]", "click[S]",
                               "click[ buy  now ]"])
    assert trs[0].state.data.query == "waterproof zip pockets rain jacket"
    assert trs[1].state.data.asin == "B0M3XG"
    assert trs[-1].terminated and trs[-1].reward == 1.0


def test_paging_and_navigation():
    env = ShopEnv(results_per_page=3, max_results=30)
    trs = play(env, G0, ["search[rain jacket]", "click[next >]", "click[next >]", "click[< prev]"])
    hits = search("rain jacket")[:30]
    assert len(hits) == 30
    pages = [t.state.data for t in trs]
    assert [p.page for p in pages] == [1, 2, 3, 2]
    assert "page 1 of 10" in trs[0].info["observation"] and "< prev" not in trs[0].info["observation"]
    for t, page in zip(trs, [1, 2, 3, 2]):
        shown = hits[(page - 1) * 3: page * 3]
        assert all(a in t.info["observation"] for a in shown)
    on_page2 = trs[-1].state
    assert asyncio.run(env.step(on_page2, f"click[{hits[0]}]")).state.data == on_page2.data  # not shown here
    item = asyncio.run(env.step(on_page2, f"click[{hits[4]}]"))
    assert item.state.data.kind == "item" and item.state.data.asin == hits[4]
    back = asyncio.run(env.step(item.state, "click[< prev]"))
    assert back.state.data == on_page2.data  # back to the same results page
    home = asyncio.run(env.step(item.state, "click[back to search]"))
    assert home.state.data == env.initial(G0).data
    last = play(env, G0, ["search[rain jacket]"] + ["click[next >]"] * 9)[-1]
    assert last.state.data.page == 10 and "next >" not in last.info["observation"]


def test_observations_list_the_actions():
    env = ShopEnv()
    trs = play(env, G0, ["search[waterproof zip pockets rain jacket]", "click[B0M3XG]", "click[s]"])
    assert "Actions: click[" in trs[0].info["observation"] and "click[back to search]" in trs[0].info["observation"]
    item = trs[-1].info["observation"]
    assert "click[buy now]" in item and "click[xxl]" in item and "(chosen: s)" in item
    assert trs[-1].state.text.endswith("\n\nAction:")


def test_episode_ends_at_buy_or_budget():
    trs = play(ShopEnv(max_depth=3), G0, ["search[rain jacket]", "click[next >]", "click[next >]"])
    assert [t.truncated for t in trs] == [False, False, True] and not any(t.terminated for t in trs)
    bought = buy(G0, "rain jacket", "B0M3XG")
    assert bought.terminated and not bought.truncated and bought.observation == ""
    assert ShopEnv().act(bought.state.data, "click[buy now]").observation.startswith("Invalid action:")


# -- the environment contract ---------------------------------------------------------------------

def test_states_are_pure_and_extend_their_parent():
    env = ShopEnv()
    assert env.initial(G0) == env.initial(G0)
    state = env.initial(G0)
    for action in ["search[waterproof rain jacket]", "click[next >]", "click[B09X6Q]", "click[m]",
                   "click[buy now]"]:
        before = state
        a, b = asyncio.run(env.step(state, action)), asyncio.run(env.step(state, action))
        assert a == b and state == before
        assert a.state.text.startswith(state.text) and a.state.token_ids[:len(state.token_ids)] == state.token_ids
        assert a.reward is None or env.reward_range[0] <= a.reward <= env.reward_range[1]
        if not a.terminated:
            state = a.state
    assert a.terminated


# Measured with the shipped data: the target is on the first page (3 results) of a search for the whole
# instruction in 68 of the 100 goals (30 at rank 1, 91 within 6); a product that fits the goal in 87.
def test_search_finds_the_target_on_the_first_page_for_most_goals():
    hits = sum(p.meta["goal"]["asin"] in search(p.prompt)[:3] for p in GOALS.values())
    top = sum(p.meta["goal"]["asin"] == search(p.prompt)[0] for p in GOALS.values())
    assert hits >= 65
    assert top < 50  # but rarely first: reading results and paging matter


def test_shipped_data_matches_the_generator(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "make_shop_data.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    for name in ("products.jsonl", "goals.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes()


# -- a search over the shop -----------------------------------------------------------------------

QUERY = "search[waterproof zip pockets rain jacket]"
MUG_QUERY = "search[ceramic coffee mug]"


def test_mcts_with_a_scripted_policy():
    mug = search("ceramic coffee mug")[0]
    plan = {
        (): [QUERY, MUG_QUERY],
        (QUERY,): ["click[b0m3xg]"],
        (QUERY, "click[b0m3xg]"): ["click[s]", "click[m]"],
        (QUERY, "click[b0m3xg]", "click[s]"): ["click[buy now]"],
        (QUERY, "click[b0m3xg]", "click[m]"): ["click[buy now]"],
        (MUG_QUERY,): [f"click[{mug}]"],
        (MUG_QUERY, f"click[{mug}]"): ["click[buy now]"],
    }

    def script(steps):
        # the transcript after "<assistant>\n", cut at "\n": each action is its own "Action: ..." line
        # (observation lines start otherwise; "Actions: ..." lists the page's choices)
        done = tuple(a for a in (s.removeprefix("Action:").strip() for s in steps if s.startswith("Action:")) if a)
        return plan.get(done, [])

    policy = ScriptedPolicy(script, delimiter="\n")
    ctx = SearchContext(env=ShopEnv(template=policy.chat_prompt), policy=policy)
    cfg = MCTSConfig(simulations=20, k=2, n_rollouts=0)
    tree = asyncio.run(mcts(G0, ctx, cfg))

    assert sorted(tree.text[c] for c in tree.children(0)) == sorted([QUERY, MUG_QUERY])
    bought = {tuple(tree.steps(n)): n for n in range(len(tree)) if tree.terminated[n]}
    expected = {(QUERY, "click[b0m3xg]", "click[s]", "click[buy now]"): 1.0,
                (QUERY, "click[b0m3xg]", "click[m]", "click[buy now]"): 0.75,
                (MUG_QUERY, f"click[{mug}]", "click[buy now]"): 0.25}
    assert {k: tree.reward[n] for k, n in bought.items()} == expected
    best = bought[(QUERY, "click[b0m3xg]", "click[s]", "click[buy now]")]
    assert tree.info[best]["success"] is True and tree.info[best]["asin"] == "B0M3XG"
    assert not any(tree.truncated[n] for n in range(len(tree)))
    # the value backed up through the root's better child is higher
    a, b = sorted(tree.children(0), key=lambda c: tree.text[c] != QUERY)
    assert tree.value(a) > tree.value(b)


def test_goal_records_round_trip():
    rows = [json.loads(line) for line in (DATA / "goals.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(GOALS)
    assert all(GOALS[r["id"]].meta["goal"] == r for r in rows)


@pytest.mark.parametrize("rpp", [1, 5])
def test_results_per_page_is_honoured(rpp):
    trs = play(ShopEnv(results_per_page=rpp), G0, ["search[rain jacket]"])
    shown = [line for line in trs[0].info["observation"].splitlines() if line.startswith("B0")]
    assert len(shown) == rpp
