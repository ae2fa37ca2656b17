"""Generate the shop environment's catalogue and goals (``treepref/data/shop/``), deterministically.

The catalogue is synthetic so the environment runs offline and ships in a few kilobytes. Categories share
attribute words ("waterproof", "insulated", "stainless steel") and every category has several products
with the same noun, so a goal's words alone rarely pick out one product: search, paging and reading item
pages all matter. Each goal is made from one target product, so the target always satisfies it.

Run ``python scripts/make_shop_data.py`` (optionally ``--out DIR``); the same seed writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

SEED = 20240611
N_PRODUCTS = 304  # 38 per category
N_GOALS = 100
OUT = Path(__file__).resolve().parent.parent / "treepref" / "data" / "shop"

COLORS = ["black", "white", "navy", "gray", "red", "blue", "green", "olive", "pink", "beige"]
BRANDS = ["Trailpeak", "Northloom", "Brightly", "Kestrel", "Oakhaven", "Veltro", "Lumio", "Sundrift",
          "Corvid", "Maplewood", "Aerly", "Stonebrook", "Halvard", "Quillo"]

# category -> (nouns, attribute pool, option name -> value pool, (min price, max price))
CATEGORIES: dict[str, tuple[list[str], list[str], dict[str, list[str]], tuple[float, float]]] = {
    "shirts": (["t-shirt", "polo shirt", "button-down shirt", "henley shirt"],
               ["cotton", "slim fit", "short sleeve", "long sleeve", "moisture wicking", "machine washable",
                "breathable", "wrinkle free"],
               {"size": ["xs", "s", "m", "l", "xl", "xxl"], "color": COLORS}, (12.0, 45.0)),
    "shoes": (["running shoes", "sneakers", "hiking boots", "slip-on loafers"],
              ["non-slip", "lightweight", "waterproof", "memory foam", "breathable", "leather", "wide width",
               "arch support"],
              {"size": ["6", "7", "8", "9", "10", "11", "12"], "color": COLORS}, (30.0, 120.0)),
    "headphones": (["over-ear headphones", "earbuds", "on-ear headphones", "gaming headset"],
                   ["wireless", "noise cancelling", "bluetooth", "foldable", "long battery life",
                    "built-in microphone", "water resistant", "lightweight"],
                   {"color": COLORS[:6]}, (20.0, 250.0)),
    "backpacks": (["backpack", "laptop backpack", "hiking daypack", "rolltop backpack"],
                  ["waterproof", "lightweight", "anti-theft", "usb charging port", "padded laptop sleeve",
                   "large capacity", "water resistant"],
                  {"size": ["small", "medium", "large"], "color": COLORS}, (25.0, 90.0)),
    "mugs": (["coffee mug", "travel mug", "tea cup", "camping mug"],
             ["ceramic", "insulated", "stainless steel", "dishwasher safe", "microwave safe", "leak proof",
              "bpa free"],
             {"capacity": ["8 oz", "12 oz", "16 oz", "20 oz"], "color": COLORS}, (8.0, 35.0)),
    "lamps": (["desk lamp", "floor lamp", "bedside lamp", "clip-on reading lamp"],
              ["led", "dimmable", "usb charging port", "touch control", "adjustable arm", "energy efficient",
               "eye-caring"],
              {"color": ["black", "white", "silver", "brass"], "light": ["warm white", "cool white", "daylight"]},
              (15.0, 120.0)),
    "jackets": (["rain jacket", "puffer jacket", "fleece jacket", "windbreaker"],
                ["waterproof", "hooded", "packable", "windproof", "insulated", "lightweight", "breathable",
                 "zip pockets"],
                {"size": ["xs", "s", "m", "l", "xl", "xxl"], "color": COLORS}, (35.0, 180.0)),
    "water bottles": (["water bottle", "sports bottle", "kids water bottle", "glass water bottle"],
                      ["insulated", "bpa free", "leak proof", "stainless steel", "dishwasher safe",
                       "straw lid", "lightweight"],
                      {"capacity": ["12 oz", "18 oz", "24 oz", "32 oz", "40 oz"], "color": COLORS},
                      (10.0, 45.0)),
}

TEMPLATES = ["i need {a} {what}{opts}, and price lower than {price} dollars",
             "i am looking for {a} {what}{opts} with price lower than {price} dollars",
             "find me {a} {what}{opts}, price lower than {price} dollars",
             "i want to buy {a} {what}{opts} that costs less than {price} dollars"]


def _asin(rng: random.Random, seen: set[str]) -> str:
    chars = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    while True:
        asin = "B0" + "".join(rng.choice(chars) for _ in range(4))
        if asin not in seen:
            seen.add(asin)
            return asin


def _options(rng: random.Random, pools: dict[str, list[str]]) -> dict[str, list[str]]:
    out = {}
    for name, pool in pools.items():
        if name in ("size", "capacity"):  # a contiguous run of sizes, as a real listing has
            k = rng.randint(min(3, len(pool)), len(pool))
            start = rng.randint(0, len(pool) - k)
            out[name] = pool[start:start + k]
        else:
            out[name] = sorted(rng.sample(pool, rng.randint(2, min(4, len(pool)))), key=pool.index)
    return out


def _title(brand: str, attrs: list[str], noun: str) -> str:
    shown = " ".join(a.title() for a in attrs)
    return f"{brand} {shown} {noun.title()}"


def make_products(rng: random.Random) -> list[dict]:
    seen: set[str] = set()
    products = []
    per = N_PRODUCTS // len(CATEGORIES)
    for category, (nouns, pool, option_pools, (lo, hi)) in CATEGORIES.items():
        for i in range(per):
            noun = nouns[i % len(nouns)]
            attrs = rng.sample(pool, rng.randint(3, 4))
            price = round(rng.uniform(lo, hi), 2)
            products.append({
                "asin": _asin(rng, seen),
                "title": _title(rng.choice(BRANDS), attrs[:rng.randint(1, 2)], noun),
                "category": category,
                "noun": noun,
                "attributes": sorted(attrs),
                "options": _options(rng, option_pools),
                "price": price,
            })
    rng.shuffle(products)
    return products


def _option_phrase(name: str, value: str) -> str:
    if name == "size":
        return f"size {value}"
    if name == "color":
        return f"{value} color"
    if name == "light":
        return f"{value} light"
    return f"{value} {name}"


def make_goals(rng: random.Random, products: list[dict]) -> list[dict]:
    goals = []
    for i, p in enumerate(rng.sample(products, N_GOALS)):
        attrs = sorted(rng.sample(p["attributes"], rng.randint(1, 2)))
        names = sorted(rng.sample(sorted(p["options"]), rng.randint(1, len(p["options"]))))
        opts = {n: rng.choice(p["options"][n]) for n in names}
        price_upper = float(math.ceil(p["price"] * rng.uniform(1.05, 1.6) / 10) * 10)
        what = " and ".join(attrs) + " " + p["noun"]
        opt_text = " and ".join(_option_phrase(n, v) for n, v in opts.items())
        instruction = rng.choice(TEMPLATES).format(
            a="an" if what[0] in "aeiou" else "a", what=what, opts=f" in {opt_text}" if opt_text else "",
            price=f"{price_upper:.2f}")
        goals.append({"id": f"shop-{i:03d}", "instruction": instruction, "asin": p["asin"],
                      "attributes": attrs, "options": opts, "price_upper": price_upper})
    return goals


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rng = random.Random(SEED)
    products = make_products(rng)
    goals = make_goals(rng, products)
    for p in products:
        del p["noun"]  # only the generator needs it (goals name it)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "products.jsonl", products)
    write_jsonl(args.out / "goals.jsonl", goals)
    print(f"wrote {len(products)} products and {len(goals)} goals to {args.out}")


if __name__ == "__main__":
    main()
