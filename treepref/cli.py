"""Command line: ``treepref generate`` searches and writes trees; ``treepref extract`` turns trees into data;
``treepref train`` trains a policy or a verifier on that data; ``treepref evaluate`` measures a policy (and a
trained verifier or PRM) on held-out problems.

A run folder holds one recipe's trees: ``config.yaml`` (the resolved config), ``recipe.json`` (the fingerprint
a rerun must match, see ``treepref.run_folder``), ``trees/`` (one JSON file per problem), and the records of
the latest attempt: ``problem_errors.jsonl`` (rows of the problems file that could not be read),
``errors.jsonl`` (problems whose search failed, with the reason), ``summary.json``; older attempts' records
are in ``attempts/<n>/``. ``exports/<format>/`` holds datasets with their ``stats.json``.

``generate`` exits 0 when every problem has its tree, 1 when some problem failed (``--allow-failures`` or
``run.allow_failures: true``: 0), 2 on a user mistake (nothing written), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from treepref.config import ConfigError, override_items
from treepref.errors import UserInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="treepref", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=catalog(),
        description="Turn LLM tree search into step-level preference data, train on it, and look at it.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="search problems with a model and write trees (and exports)")
    gen.add_argument("--config", "-c", required=True, help="YAML recipe, e.g. configs/demo.yaml")
    gen.add_argument("--output", "-o", help="run folder (default: run.output of the config)")
    gen.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set search.options.simulations=8")
    gen.add_argument("--no-extract", action="store_true", help="write trees only")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.add_argument("--verbose", "-v", action="store_true",
                     help="show the engines' logs here instead of in RUN/logs/engine.log")
    gen.add_argument("--force", action="store_true",
                     help="continue a run folder whose trees came from a different recipe")
    gen.add_argument("--allow-failures", action="store_true",
                     help="exit 0 even when some problems failed (as run.allow_failures: true)")

    ext = sub.add_parser("extract", help="export preference data from a run's trees")
    ext.add_argument("run", help="run folder written by treepref generate")
    ext.add_argument("--format", "-f", action="append", dest="formats", help="format name (repeatable)")
    ext.add_argument("--rule", help="pair selection rule")
    ext.add_argument("--value", help="which node value orders pairs: value | mc | reward | a scores key; "
                                      "stepwise also outcome (each step labelled by its path's end)")
    ext.add_argument("--layout", choices=["standard", "conversational"])
    ext.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="extract option, e.g. --set min_margin=0.3")

    tr = sub.add_parser("train", help="train on exported data: step-DPO, Step-APO, TPO, a verifier or a PRM")
    tr.add_argument("--config", "-c", required=True, help="YAML recipe, e.g. configs/train-step-dpo.yaml")
    tr.add_argument("--output", "-o", help="output folder (default: output of the config)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set train.max_steps=2")

    ev = sub.add_parser("evaluate", help="held-out accuracy of a policy, and best-of-N reranking by verifiers")
    ev.add_argument("--model", help="policy folder (default: the embedded SmolLM2), e.g. runs/train-step-dpo/model")
    ev.add_argument("--verifier", help="a pairwise verifier folder written by treepref train")
    ev.add_argument("--prm", help="a PRM or PAV folder written by treepref train")
    ev.add_argument("--problems", default="arithmetic", help="problem source (as problems.source of a recipe)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="problem option, e.g. --set difficulty=1 --set count=64 --set seed=999")
    ev.add_argument("--n", type=int, default=8, help="samples per problem for reranking")
    ev.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ev.add_argument("--output", "-o", help="write the report here as JSON")

    show = sub.add_parser("show", help="print a run's summary and one tree as an outline")
    show.add_argument("run")
    show.add_argument("--problem", help="problem id (default: the first tree)")

    view = sub.add_parser("view", help="write one self-contained HTML page that shows a run's trees")
    view.add_argument("run")
    view.add_argument("--problem", help="problem id shown first (default: the first tree)")
    view.add_argument("--output", "-o", help="HTML file to write (default: RUN/view.html)")

    rep = sub.add_parser("report", help="write an HTML report of a run: plots of pairs and trees, failures")
    rep.add_argument("run")
    rep.add_argument("--output", "-o", metavar="FOLDER", help="folder to write into (default: RUN/report)")

    chk = sub.add_parser("check-env", help="run the conformance checks on an environment (no model needed)")
    chk.add_argument("env", help="a registered name (reasoning, shop, tools) or package.module:ClassName")
    chk.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="an environment option, e.g. --set max_depth=4")
    chk.add_argument("--problems", help="problems source (default: the environment's own; seeds for a user's class)")
    chk.add_argument("--count", type=int, default=4, help="problems to walk")
    chk.add_argument("--tasks", metavar="JSON",
                     help='reset options of the seeds walked: a JSON mapping or list of them, e.g. \'[{"item": "key"}]\'')
    chk.add_argument("--success", type=float, default=1.0,
                     help="the reward counted as solved where the environment does not say (env.success)")

    args = parser.parse_args(argv)
    commands = {"generate": _generate, "extract": _extract, "train": _train, "evaluate": _evaluate,
                "show": _show, "view": _view, "report": _report, "check-env": _check_env}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"treepref: config error: {exc}", file=sys.stderr)
        return 2
    except UserInputError as exc:
        print(f"treepref: {args.command} error: {exc}", file=sys.stderr)
        return 2


def _check_env(args) -> int:
    from treepref.envs import EnvError, build_env, default_problems
    from treepref.envs.check import check
    from treepref.domains import build_problems

    try:
        env = build_env(args.env, _set_options(args.overrides), source="check-env")
        tasks = {} if args.tasks is None else {"options": _json_option("--tasks", args.tasks)}
        problems, _ = build_problems(args.problems or default_problems(args.env), count=args.count, **tasks)
    except (EnvError, ValueError) as exc:
        raise UserInputError(str(exc)) from None
    report = check(env, problems, success=args.success)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _json_option(flag: str, text: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserInputError(f"{flag}: not JSON ({exc})") from None


def _summary(doc: str | None) -> str:
    """A docstring's first sentence, without reST markup, for the help text."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "").replace("*", "")
    return text[:text.index(". ") + 1] if ". " in text else text


def catalog() -> str:
    """What a recipe can name, a line each: read from the modules' own docstrings, so it cannot go stale."""
    import sys

    from treepref.backends import BACKENDS
    from treepref.envs import ENVS
    from treepref.extract.formats import FORMATS
    from treepref.extract.rules import RULES
    from treepref.search import SEARCHES

    def module_doc(obj) -> str | None:
        return sys.modules[obj.__module__].__doc__

    backends = {}  # one line per class: "transformers" and "server" are aliases of "hf" and "openai"
    for k, cls in BACKENDS.items():
        backends.setdefault(cls, k)
    sections = {
        "environments (env.name)": {k: module_doc(cls) for k, cls in ENVS.items()},
        "searches (search.name)": {k: module_doc(s.run) for k, s in SEARCHES.items()},
        "backends (model.backend)": {k: module_doc(cls) for cls, k in backends.items()},
        "export formats (extract --format)": {k: f.build.__doc__ for k, f in FORMATS.items()},
        "pair rules (extract --rule)": {k: f.__doc__ for k, f in RULES.items()},
    }
    lines = []
    for title, items in sections.items():
        lines.append(f"{title}:")
        lines += [f"  {name:<17} {_summary(doc)}" for name, doc in items.items()]
    return "\n".join(lines)


# -- generate -------------------------------------------------------------------------------------------
def _generate(args) -> int:
    from treepref import pipeline

    try:  # everything a user can get wrong is checked before the run folder is touched or an engine starts
        plan = pipeline.prepare(args.config, args.output, overrides=args.overrides, force=args.force)
    except pipeline.NoProblems as exc:
        for e in exc.errors[:5]:  # every row was bad: say which and why (no run folder is written)
            print(f"treepref: bad problem row: {e}", file=sys.stderr)
        print(f"treepref: {exc}", file=sys.stderr)
        return 1
    pipeline.start(plan)  # the previous attempt's summary and errors go to attempts/<n>/
    for line in pipeline.notes(plan):
        print(f"treepref: {line}", file=sys.stderr)
    from treepref.console import engine_log
    from treepref.executors import ExecutorError

    cfg, out = plan.cfg, plan.out
    engine = out / "logs" / "engine.log"
    print(f"treepref: {cfg.search.name} on {len(plan.problems)} {cfg.problems.source} problems, model "
          f"{cfg.model.name or 'SmolLM2-135M-Instruct (embedded)'} on {cfg.model.backend}, into {out}"
          + ("" if args.verbose else f" (engine log: {engine})"), flush=True)
    with _sigterm_as_interrupt(), engine_log(engine, enabled=not args.verbose) as terminal:
        try:
            summary = pipeline.search_problems(plan, progress=not args.quiet, progress_file=terminal)
        except ExecutorError as exc:  # no cluster, or actors that cannot start: one line
            print(f"treepref: {exc}", file=terminal)
            return 1
        except KeyboardInterrupt:
            print(f"treepref: interrupted; the trees written so far are kept in {out / 'trees'} (rerun to "
                  "resume)", file=terminal)
            return 130
        result = pipeline.finish(plan, summary, extract=not args.no_extract)
    _print_summary(result)
    return _failures_exit(summary, out, allow=args.allow_failures or cfg.run.allow_failures)


def _failures_exit(summary, out: Path, allow: bool) -> int:
    """Name the failed problems (a few) and where the rest is; 1 when any failed, unless allowed."""
    from treepref.pipeline import failures_line

    if not summary.failed:
        return 0
    for f in summary.failures[:10]:
        print(f"treepref: failed {f['problem_id']} ({f['reason']}): {f['error']}", file=sys.stderr)
    print(f"treepref: {failures_line(summary, out)}"
          + ("" if allow else " (rerun to retry them; --allow-failures to exit 0)"), file=sys.stderr)
    return 0 if allow else 1


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops a run the way Ctrl-C does, so the engine is shut down (its processes with it) rather
    than the process vanishing, also where SIGINT is ignored (a run started in the background); the previous
    handler comes back afterwards."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # started in the background (`nohup ... &`): Ctrl-C is off, and SIGINT would be ignored too
            raise KeyboardInterrupt
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- extract --------------------------------------------------------------------------------------------
def _extract(args) -> int:
    from treepref.pipeline import extract

    result = extract(args.run, formats=args.formats, rule=args.rule, value=args.value, layout=args.layout,
                     options=_set_options(args.overrides))
    print(json.dumps(result, indent=2))
    return 0


def _set_options(items: list[str]) -> dict:
    """``--set key=value`` options of extract and evaluate, read by the one rule of ``--set``
    (``config.override_items``: values parsed as YAML)."""
    return {key: value for key, value, _ in override_items(items)}


# -- train ----------------------------------------------------------------------------------------------
def _train(args) -> int:
    from treepref.pipeline import train

    summary = train(args.config, args.output, overrides=args.overrides)
    print(f"treepref: trained {summary['method']} on {summary['examples']} examples for {summary['steps']} steps "
          f"(loss {summary['train_loss']:.4f}); wrote {summary['model']}")
    return 0


# -- evaluate -------------------------------------------------------------------------------------------
def _evaluate(args) -> int:
    from treepref.domains import build_problems

    # held out: the demo generates from seed 0
    options = {"seed": 999, "count": 64, "difficulty": 1, **_set_options(args.overrides)}
    if args.problems != "arithmetic":
        options = {k: v for k, v in options.items() if k != "difficulty"}
    for folder in (args.model, args.verifier, args.prm):
        if folder is not None and not Path(folder).is_dir():
            raise UserInputError(f"{folder}: no such model folder")
    try:
        problems, errors = build_problems(args.problems, **options)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"--problems {args.problems}: {exc}") from None
    for e in errors[:20]:
        print(f"treepref: skipped bad problem: {e}", file=sys.stderr)
    if not problems:
        raise UserInputError("no problems to evaluate on")
    from treepref.train.evaluate import evaluate

    backend_options = {"max_model_len": 2048} if args.backend == "vllm" else {}
    report = asyncio.run(evaluate(args.model, problems=problems, n=args.n, verifier=args.verifier, prm=args.prm,
                                  backend=args.backend, backend_options=backend_options))
    report["problem_source"] = {"source": args.problems, **options}
    if args.output:
        from treepref.runner import write_json

        write_json(Path(args.output), report)
    print(f"treepref: {len(problems)} problems, {args.n} samples each, model {args.model or 'embedded SmolLM2'}")
    for name, r in report["policy"].items():
        print(f"treepref: policy {name}: {_acc(r)}")
    for name, r in report["rerank"].items():
        print(f"treepref: best-of-{args.n} by {name}: {_acc(r)}")
    for name, r in report["first_error"].items():
        shares = {k: "-" if r[k] is None else f"{r[k]:.3f}" for k in ("error_accuracy", "correct_accuracy", "f1")}
        print(f"treepref: {name} finds the first wrong step of {shares['error_accuracy']} of {r['n_error']} "
              f"solutions with one, passes {shares['correct_accuracy']} of {r['n_correct']} without: "
              f"F1 {shares['f1']}")
    return 0


def _acc(r) -> str:
    if not isinstance(r, dict) or "accuracy" not in r:
        return str(r)
    lo, hi = r.get("ci95", (None, None))
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return f"{r['accuracy']:.3f}{ci}"


# -- show -----------------------------------------------------------------------------------------------
def _show(args) -> int:
    from treepref.runner import load_trees

    run = Path(args.run)
    if (run / "summary.json").exists():
        print((run / "summary.json").read_text())
    trees = load_trees(run)
    if args.problem:
        trees = [t for t in trees if t.problem_id == args.problem]
    if not trees:
        print("no trees", file=sys.stderr)
        return 1
    tree = trees[0]
    print(f"# {tree.problem_id}  (answer: {tree.answer})")
    kids = tree.children_map()

    def walk(node: int, indent: int) -> None:
        for c in kids[node]:
            if tree.kind[c] != "step":
                continue
            v = tree.value(c)
            tag = "T" if tree.terminated[c] else ("X" if tree.truncated[c] else " ")
            text = tree.text[c].replace("\n", " ")[:90]
            print(f"{'  ' * indent}[{tag}] v={'-' if v is None else f'{v:.2f}'} n={tree.visits[c]} {text}")
            walk(c, indent + 1)

    walk(0, 0)
    return 0


# -- view -----------------------------------------------------------------------------------------------
def _view(args) -> int:
    from treepref.view import ViewError, write_view

    try:
        out = write_view(args.run, args.output, problem=args.problem)
    except ViewError as exc:
        raise UserInputError(str(exc)) from None
    print(out)
    return 0


def _report(args) -> int:
    from treepref.report import ReportError, write_report

    try:
        out = write_report(args.run, args.output)
    except ReportError as exc:
        raise UserInputError(str(exc)) from None
    print(out)
    return 0


def _print_summary(result: dict) -> None:
    """The run in one small table (rich), then where to look at it."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    run = ", ".join(f"{k.replace('_', ' ')} {result[k]}" for k in
                    ("problems", "searched", "resumed", "failed", "nodes", "generated_tokens") if k in result)
    table.add_row("run", f"{run}; {result.get('wall_time_s', 0):.0f} s")
    if result.get("evaluator_overlap") is not None:  # a PRM, judge or self-evaluation valued the nodes
        table.add_row("evaluators", f"{result['evaluator_s']:.0f} s busy, {result['evaluator_overlap']:.0%} of it "
                                    "while the policy generated")
    for fmt, stats in result.get("exports", {}).items():
        line = f"{stats.get('rows', 0)} rows"
        quality = stats.get("label_quality")
        if quality and quality.get("pairs"):
            line += f", {quality['good']} good by the exact checker ({quality['good_share']:.0%})"
        if stats.get("why"):
            line = stats["why"]
        table.add_row(f"export {fmt}", line)
    out = result["output"]
    table.add_row("wrote", str(out))
    table.add_row("look", f"treepref view {out}  ·  treepref report {out}")
    Console(highlight=False).print(table)


if __name__ == "__main__":
    sys.exit(main())
