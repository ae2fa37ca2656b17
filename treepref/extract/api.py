"""The export entry points the CLI calls: trees in, a ``datasets.Dataset`` and its statistics out."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

from treepref.envs.reasoning import DEFAULT_SYSTEM
from treepref.extract.common import LAYOUTS, OUTCOME, Prompter, Template, check_value_name, value_reader
from treepref.extract.formats import FORMATS, ID_COLUMNS, Context
from treepref.extract.rules import RULES
from treepref.extract.stats import apply_filters, dedup, export_stats, filter_settings
from treepref.tree import STEP, Tree

WEIGHTS = (None, "visits")
RESPONSES = ("paths", "siblings")


def template_from_tokenizer(path: str | os.PathLike) -> Template:
    """``messages -> str`` with the tokenizer's chat template and the generation prompt appended."""
    tok = _tokenizer(str(path))
    return functools.partial(tok.apply_chat_template, tokenize=False, add_generation_prompt=True)


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _choose(name: str, options: tuple, what: str) -> str:
    if name not in options:
        raise ValueError(f"unknown {what} {name!r} (known: {', '.join(map(str, options))})")
    return name


def _rule_options(rule: str) -> set[str]:
    params = inspect.signature(RULES[rule]).parameters
    return {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n != "value"}


def option_names(fmt: str, rule: str | None = None) -> set[str]:
    """The keyword options ``export`` takes for ``fmt`` with ``rule`` (None: the format's default)."""
    form = FORMATS.get(fmt)
    rule = rule or form.default_rule
    names = set(form.filters) | ({"threshold", "paths"} if fmt == "stepwise" else set())
    if fmt in ("step_pairs", "step_apo"):  # their rows carry a per-pair weight (MCTS-DPO's visit confidence)
        names |= {"weight", "weight_k"}
    if rule:
        RULES.get(rule)
        names |= _rule_options(rule) - {"success"}
    return names


def options_per_format(formats, rule: str | None, options: dict) -> dict[str, dict]:
    """One recipe's ``extract.options`` split over its formats: each format gets the options it takes, and an
    option that none of them takes is a ValueError (so a typo never passes because another format exists)."""
    takes = {f: option_names(f, rule if FORMATS[f].default_rule is not None else None) for f in formats}
    for name in options:
        if not any(name in t for t in takes.values()):
            raise ValueError(f"unknown option {name!r}: none of the formats {list(formats)} takes it "
                             f"(they take: {sorted(set().union(*takes.values()))})")
    return {f: {k: v for k, v in options.items() if k in takes[f]} for f in formats}


def check_value_format(value: str | None, fmt: str) -> None:
    """Raise if ``value`` is one only some formats read (``outcome``: a path's end, so stepwise rows only)."""
    if value == OUTCOME and fmt != "stepwise":
        raise ValueError(f"value='outcome' labels stepwise rows by how their path ended; format {fmt!r} "
                         "compares node values (value, mc, reward or a scores key)")


def check_settings(fmt: str, *, layout: str = "standard", rule: str | None = None, weight: str | None = None,
                   responses: str = "paths", success: float = 1.0, options: dict | None = None
                   ) -> tuple[str | None, dict, dict]:
    """Check an export's settings without any tree (a recipe checks them before its search starts):
    returns the rule (the format's default where None), the rule's options and the filter settings;
    a bad name or option is a ValueError saying what is accepted."""
    form = FORMATS.get(fmt)
    _choose(layout, LAYOUTS, "layout")
    if layout not in form.layouts:
        raise ValueError(f"format {fmt!r} has only the layouts {form.layouts}, not {layout!r}")
    if weight not in WEIGHTS:
        raise ValueError(f"unknown weight {weight!r}; choose one of {WEIGHTS}")
    if responses not in RESPONSES:
        raise ValueError(f"unknown responses {responses!r}; choose one of {RESPONSES}")
    if rule is not None and form.default_rule is None:
        raise ValueError(f"format {fmt!r} takes no pair rule (got rule={rule!r})")
    rule = rule or form.default_rule
    rule_opts, filters = {}, {}
    accepted = set()
    if rule:
        RULES.get(rule)
        accepted = _rule_options(rule) - {"success"}  # the export's own ``success`` is passed on
        if "success" in _rule_options(rule):
            rule_opts["success"] = success
    for name, val in (options or {}).items():
        if name in accepted:
            rule_opts[name] = val
        elif fmt == "stepwise" and name in ("threshold", "paths"):
            rule_opts[name] = val  # passed on to stepwise_rows
        elif name in form.filters:
            filters[name] = val  # checked by filter_settings
        else:
            raise ValueError(f"unknown option {name!r} for format {fmt!r}"
                             + (f" and rule {rule!r}" if rule else "")
                             + f"; rule options: {sorted(accepted)}, filters: {list(form.filters)}")
    return rule, rule_opts, filter_settings(form.filters, filters)


def export(trees: list[Tree], fmt: str, *, template: Template | str | None = None, layout: str = "standard",
           rule: str | None = None, value: str | None = None, recipe: str = "",
           system: str | None = DEFAULT_SYSTEM, delimiter: str = "\n\n", kind: str | None = STEP,
           weight: str | None = None, weight_k: float = 1.0, responses: str = "paths", success: float = 1.0,
           deduplicate: bool = True, few_shot: tuple = (), **options):
    """Turn search trees into one export format; returns ``(dataset, stats)``.

    * ``fmt``: a name in ``FORMATS``.
    * ``template``: ``messages -> str`` (``policy.chat_prompt``, ``template_from_tokenizer(path)``, or a
      tokenizer folder). ``system``, ``delimiter`` and ``few_shot`` must match the environment the search
      ran with; a tree the runner wrote records all three, and those are used instead (``Prompter.for_tree``).
    * ``layout``: ``standard`` or ``conversational`` (see ``common.Prompter``).
    * ``rule``: a name in ``RULES`` for the sibling-pair formats (None: the format's default).
    * ``value``: ``value`` | ``mc`` | ``reward`` | a ``scores`` key (None: ``mc`` for stepwise, else ``value``);
      stepwise also takes ``outcome`` (each step labelled by its path's end: an ORM's targets).
    * ``kind``: the kind of children compared (None: rollouts too).
    * ``weight``: None (1.0) or ``visits`` (``rules.visit_weight`` with pseudo-count ``weight_k``).
    * ``responses``: ranked_lists responses, ``paths`` (step + best continuation) or ``siblings``.
    * ``success``: the reward counted as solved (on_off_path, trajectory_pairs, trees stats).
    * other keywords: the rule's options (``margin``, ``edit``, ``threshold``), stepwise's ``threshold`` and
      ``paths``, and filters (``min_margin``, ``min_edit``, ``max_per_node``, ``max_per_problem``; for the
      sibling-pair formats also ``prefix`` = None | ``"any"`` | ``"success"`` | ``"value"`` with
      ``prefix_value`` (0.5), and ``min_visits``; see ``stats.apply_filters``). The sibling-pair formats filter
      by default with ``prefix="success"`` and ``min_visits=2`` (``stats.FILTER_DEFAULTS``; None turns one
      off); every other filter is off by default.

    ``stats`` is ``stats.export_stats`` plus the settings used (``filters``: every filter of the format with
    its setting, None = off) and what deduplication and each filter dropped.
    """
    import datasets

    rule, rule_opts, filters = check_settings(fmt, layout=layout, rule=rule, weight=weight, responses=responses,
                                              success=success, options=options)
    form = FORMATS[fmt]
    value = value or form.default_value
    check_value_format(value, fmt)
    check_value_name(value, trees)
    if isinstance(template, (str, os.PathLike)):
        template = template_from_tokenizer(template)
    read = value_reader(value)
    ctx = Context(prompter=Prompter(template, layout, system, delimiter, tuple(few_shot)), read=read, value=value,
                  recipe=recipe, rule=rule or "", kind=kind, weight=weight, weight_k=weight_k,
                  responses=responses, success=success, options=rule_opts,
                  rule_fn=functools.partial(RULES[rule], value=read, **rule_opts) if rule else None)
    items = [it for tree in trees
             for it in form.build(tree, dataclasses.replace(ctx, prompter=ctx.prompter.for_tree(tree)))]
    dropped = {}
    if deduplicate:
        items, dropped["duplicates"] = dedup(items)
    items, more = apply_filters(items, **filters)
    dropped.update(more)
    stats = export_stats(trees, items)
    stats.update({"format": fmt, "layout": layout, "rule": rule, "rule_options": rule_opts, "value": value,
                  "recipe": recipe, "filters": filters, "weight": weight, "dropped": dropped})
    if not items:  # keep the format's columns, so an empty export still loads with the right names
        features = datasets.Features({c: _id_feature(c) if c in ID_COLUMNS else datasets.Value("null")
                                      for c in form.columns})
        return datasets.Dataset.from_dict({c: [] for c in form.columns}, features=features), stats
    rows = [it.row for it in items]
    ds = datasets.Dataset.from_list(rows)
    untyped = [c for c in ds.column_names if c in ID_COLUMNS and ds.features[c] != _id_feature(c)]
    if untyped:  # every id list empty (trees without ids): type them as ids anyway, one schema for all exports
        features = ds.features.copy()
        for c in untyped:
            features[c] = _id_feature(c)
        ds = datasets.Dataset.from_list(rows, features=features)
    return ds, stats


def _id_feature(column: str):
    """int64 lists, nested as deep as the id column is (``formats.ID_COLUMNS``)."""
    import datasets

    nest = getattr(datasets, "List", None) or datasets.Sequence  # List from datasets 4, Sequence before
    feature = datasets.Value("int64")
    for _ in range(ID_COLUMNS[column]):
        feature = nest(feature)
    return feature


def write_export(trees: list[Tree], out_dir: str | os.PathLike, fmt: str, **kwargs) -> dict:
    """Export and write ``out_dir/dataset`` (``save_to_disk``), ``out_dir/rows.jsonl`` and
    ``out_dir/stats.json``. All three appear at once: they are written to a sibling folder that then
    replaces ``out_dir``. Returns the statistics."""
    ds, stats = export(trees, fmt, **kwargs)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        ds.save_to_disk(str(tmp / "dataset"), num_shards=1 if len(ds) == 0 else None)
        with open(tmp / "rows.jsonl", "w", encoding="utf-8") as f:
            for row in ds:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        with open(tmp / "stats.json", "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2, ensure_ascii=False)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats
