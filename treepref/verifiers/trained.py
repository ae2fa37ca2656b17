"""Verifiers trained by ``treepref train``, loaded back as value sources (generate → train → generate again).

``treepref train`` saves a trained verifier as an ordinary Hugging Face folder ``OUT/model/`` holding the
weights, the tokenizer and ``treepref-train.json`` (its ``"method"`` says which kind it is):

* ``method: "verifier"`` — a pairwise verifier: a sequence-classification head with one logit, trained with a
  Bradley–Terry loss on ``prompt_ids + step_ids`` (no EOS). A path's score is the logit at its last token
  (the head pools the last token that is not ``config.pad_token_id``). :class:`TrainedVerifier`.
* ``method: "prm"`` — a stepwise PRM: a 2-class token-classification head on ``prompt_ids`` followed by every
  step's ids; step i is labelled at its own last token and P(good) = softmax(logits)[1] there.
  :class:`TrainedPRM`.
* ``method: "pav"`` — a process advantage verifier (PAV): the same layout with a 1-output token head, and step
  i's predicted advantage A = tanh(logit) in [-1, 1] at its last token: the progress the step makes in a
  prover's chance of reaching the answer (``verifiers.progress``). :class:`TrainedPAV`.
* ``method: "dpo"`` (or ``step_apo``, ``tpo``) — a policy, read as a step-level Q-value model: DPO's implicit
  reward β·(log π_θ(a|s) − log π_ref(a|s)) of an action given its context, against the model training started
  from. :class:`TrainedQ`, loaded by :func:`load_q_model` (``load_trained`` reads the verifier kinds only).

:func:`load_trained` picks the verifier class from the summary.

Two ways in:

* **Token ids** (exact): ``score_ids`` takes the ids the policy saw — a tree's ``Tree.prompt_ids(node)``
  is the prompt followed by every step's ids down to ``node``; the root's ``Tree.token_ids[ROOT]`` is the
  prompt and ``Tree.token_ids[i]`` the ids step ``i`` was generated with. These are what the verifier was
  trained on, so the scores are the trained model's scores on the policy's own tokens.
* **Text** (the ``StepScorer`` protocol of ``verifiers.prm``: ``await scorer(problems, steps)``): the text
  is *re-encoded*. The prompt comes from ``render`` (below) and each step from
  ``tokens.step_ids(tokenizer, step + "\\n\\n")``, the running-text encoding, so the delimiter is the two
  "\\n" tokens (198, 198 for SmolLM2) a model writes rather than the single token of a text ending in
  "\\n\\n". The ids are usually but not always the ones the policy generated (a sampled tokenisation need
  not be the canonical one, and a finished solution's last step was generated without a delimiter), so
  text scores are close to, not equal to, the id scores.

``render`` is a callable ``Problem -> list[int]`` giving the prompt ids the policy saw. The default applies
the saved tokenizer's chat template to ``[{"role": "user", "content": problem.question}]`` with the
generation prompt on; that is *not* the prompt of a ``ReasoningEnv`` (which adds its system prompt and any
few-shot turns). To score with the policy's prompt, pass the environment's rendering of the root::

    env = ReasoningEnv(template=policy.chat_prompt, tokenizer=policy, ...)   # the env the search used
    verifier = load_trained("OUT/model", render=lambda p: list(env.render(env.initial(p))))

(``env.initial(problem)`` is the root state, ``env.render(state)`` its token ids; give the env the policy's
tokenizer, since without one it encodes with the toy ``PLAIN`` tokenizer.)

Models load in float32. Batches are right-padded and sorted by length (a row's positions and, under causal
attention, its scores do not depend on its batch-mates), run without gradients, and in the async path in a
worker thread (``asyncio.to_thread``) behind a lock, one model call at a time.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path
from typing import Callable, Sequence

from treepref.problems import Problem

SUMMARY = "treepref-train.json"  # the name ``train.trainer`` writes (not imported: that module imports torch)
Render = Callable[[Problem], Sequence[int]]


def read_summary(folder: str | Path) -> dict | None:
    """``folder``'s ``treepref-train.json`` (what it was trained on and how), or None when it has none."""
    path = Path(folder) / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder}: {SUMMARY} is not readable JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{folder}: {SUMMARY} is not a JSON object")
    return summary


def read_method(folder: str | Path) -> str | None:
    """The ``"method"`` in ``folder``'s ``treepref-train.json``, or None when the folder has no summary."""
    summary = read_summary(folder)
    if summary is None:
        return None
    method = summary.get("method")
    if not isinstance(method, str):
        raise ValueError(f"{folder}: {SUMMARY} has no \"method\"")
    return method


def model_folder(folder: str | Path) -> Path:
    """Where the model is: ``folder`` itself, or ``folder/model`` when ``folder`` is the run's output folder
    (``treepref train`` saves the model under it)."""
    folder = Path(folder)
    if not (folder / SUMMARY).is_file() and (folder / "model" / SUMMARY).is_file():
        return folder / "model"
    return folder


def sigmoid(x: float) -> float:
    """A logit as a probability, without overflow at either end (math.exp overflows past 709)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class _Trained:
    """Loading, prompt rendering, step encoding and right-padded batching shared by every kind."""

    method: str
    also: tuple[str, ...] = ()  # other methods whose folders this class reads
    _auto: str  # the transformers Auto class the folder is loaded with
    _labels: int | None  # the head's number of outputs (None: a language model's, not checked)

    def __init__(self, folder: str | Path, *, device: str = "cpu", batch_size: int = 16,
                 render: Render | None = None) -> None:
        import torch
        import transformers

        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise ValueError(f"{self.folder}: not a Hugging Face model folder (no config.json)")
        method = read_method(self.folder)
        if method is not None and method not in (self.method, *self.also):
            raise ValueError(f"{self.folder}: trained with method {method!r}, but {type(self).__name__} loads "
                             f"method {self.method!r} (load_trained picks the class for you)")
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.render = render
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.folder))
        auto = getattr(transformers, self._auto)
        self.model = auto.from_pretrained(str(self.folder), dtype=torch.float32).to(device).eval()
        if self._labels is not None and self.model.config.num_labels != self._labels:
            raise ValueError(f"{self.folder}: the head has {self.model.config.num_labels} labels; "
                             f"{type(self).__name__} reads {self._labels}")
        if self.model.config.pad_token_id is None:  # the trainer always sets it; a hand-made folder may not
            tok = self.tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            self.model.config.pad_token_id = pad if pad is not None else 0
        self.pad_id = int(self.model.config.pad_token_id)
        self._lock = threading.Lock()
        # what the model was trained to read before the steps (treepref train's ``input``): the policy's prompt
        # ids as the tree recorded them, or its own short prompt on the question alone
        self.input = ((read_summary(self.folder) or {}).get("config") or {}).get("input", "policy")
        self._questions: dict[str, tuple[int, ...]] = {}

    # -- text → ids --------------------------------------------------------------------------------
    def prompt_ids(self, problem: Problem) -> list[int]:
        """The prompt ids of ``problem``: ``render(problem)``, or the saved chat template on its question
        (always the latter for a scorer trained with ``input: question``)."""
        if self.render is not None and self.input == "policy":
            return [int(t) for t in self.render(problem)]
        from treepref.tokens import question_ids

        try:
            return question_ids(self.tokenizer, problem.question)
        except ValueError as exc:  # no chat template saved
            raise ValueError(f"{self.folder}: the tokenizer has no chat template ({exc}); pass render=") from None

    def row(self, prompt_ids: Sequence[int], steps_ids: Sequence[Sequence[int]], question: str) -> tuple:
        """What this scorer reads for a path: the policy's prompt ids and the steps' ids as generated, or,
        for a scorer trained with ``input: question``, its own short prompt on ``question`` before them."""
        if self.input == "question":
            prompt_ids = self._question_ids(question)
        return tuple(int(t) for t in prompt_ids), tuple(tuple(int(t) for t in s) for s in steps_ids)

    def _question_ids(self, question: str) -> tuple[int, ...]:
        if question not in self._questions:
            self._questions[question] = tuple(self.prompt_ids(Problem(id="", prompt=question)))
        return self._questions[question]

    def step_ids(self, text: str) -> list[int]:
        """A step's text as running-text ids, its "\\n\\n" delimiter included."""
        from treepref.tokens import step_ids

        return step_ids(self.tokenizer, text + "\n\n")

    # -- batching ----------------------------------------------------------------------------------
    def _batches(self, seqs: Sequence[Sequence[int]]):
        """Right-padded batches of similar length: ``(indices into seqs, ids, attention mask)`` on the device."""
        import torch

        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = max(len(seqs[i]) for i in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, i in enumerate(chunk):
                ids[k, :len(seqs[i])] = torch.tensor(list(seqs[i]), dtype=torch.long)
                mask[k, :len(seqs[i])] = 1
            yield chunk, ids.to(self.device), mask.to(self.device)

    def _run(self, seqs: Sequence[Sequence[int]], read) -> list:
        """``read(logits_row, length)`` of every sequence, in batches of similar length, in input order."""
        import torch

        out: list = [None] * len(seqs)
        for chunk, ids, mask in self._batches(seqs):
            with self._lock, torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float().cpu()
            for k, i in enumerate(chunk):
                out[i] = read(logits[k], len(seqs[i]))
        return out

    # -- the StepScorer protocol -------------------------------------------------------------------
    async def __call__(self, problems: list[Problem], steps: list[list[str]]) -> list[list[float]]:
        if len(problems) != len(steps):
            raise ValueError(f"{len(problems)} problems but {len(steps)} step lists")
        return await asyncio.to_thread(self.score_texts, problems, steps)

    def score_texts(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        raise NotImplementedError

    # -- inside a search ---------------------------------------------------------------------------
    async def score_node(self, tree, node: int) -> float:
        """A node's score from the ids the policy generated (exact; in (0, 1), a PAV's in [-1, 1]): the search
        hook ``scorer(tree, node)`` (e.g. ``BeamConfig(scorer=load_trained(folder).score_node)``)."""
        return await asyncio.to_thread(self.score_node_sync, tree, node)

    def score_node_sync(self, tree, node: int) -> float:
        raise NotImplementedError


class TrainedVerifier(_Trained):
    """A pairwise verifier from ``treepref train --method verifier``: one logit per path.

    ``score_ids(sequences)`` gives the raw logit of each sequence (prompt ids followed by the step ids of a
    path prefix, no EOS: what the verifier was trained on). Awaited as a ``StepScorer``, it scores every
    prefix path of each solution, ``steps[:1]``, ``steps[:2]``, ..., as ``sigmoid(logit)`` in (0, 1).
    See the module docstring for ``render`` and for ids versus text.
    """

    method = "verifier"
    _auto = "AutoModelForSequenceClassification"
    _labels = 1

    def score_ids(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """The raw logit of each token-id sequence, read at its last token."""
        for n, s in enumerate(sequences):
            if not s:
                raise ValueError(f"sequence {n} is empty")
            if int(s[-1]) == self.pad_id:
                # The head pools the last token that is not the pad id, so this row would be read early
                # (the trainer refuses such examples for the same reason).
                raise ValueError(f"sequence {n} ends in the pad id {self.pad_id}; its score would be misread")
        return self._run(sequences, self._read)

    @staticmethod
    def _read(logits, length: int) -> float:
        return float(logits[0])  # already pooled at the last non-pad token: [num_labels]

    def sequence(self, prompt_ids: Sequence[int], steps_ids: Sequence[Sequence[int]], question: str) -> list[int]:
        """What this verifier reads for a path, as one sequence: ``row``'s prompt, then every step's ids."""
        prompt, steps = self.row(prompt_ids, steps_ids, question)
        return [*prompt, *(t for s in steps for t in s)]

    def score_node_sync(self, tree, node: int) -> float:
        """sigmoid of the logit on the prompt and every step down to ``node`` (``Tree.prompt_ids(node)``, or the
        question's short prompt before the same steps for a verifier trained with ``input: question``)."""
        from treepref.extract.common import problem_of
        from treepref.tree import ROOT

        steps = tree.path_ids(node)
        return sigmoid(self.score_ids([self.sequence(tree.token_ids[ROOT], steps, problem_of(tree).question)])[0])

    def prefix_ids(self, problem: Problem, steps: Sequence[str]) -> list[list[int]]:
        """The ids of every prefix path of ``steps`` (re-encoded text), shortest first."""
        ids, out = self.prompt_ids(problem), []
        for step in steps:
            ids = ids + self.step_ids(step)
            out.append(ids)
        return out

    def score_texts(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        rows = [self.prefix_ids(p, s) if s else [] for p, s in zip(problems, steps)]
        flat = [seq for row in rows for seq in row]
        logits = iter(self.score_ids(flat))
        return [[sigmoid(next(logits)) for _ in row] for row in rows]


class _Stepwise(_Trained):
    """A token head read at the last token of every step of ``prompt_ids + steps_ids[0] + steps_ids[1] + ...``
    (each step's ids as generated, its "\\n\\n" included); a subclass says what a step's outputs mean
    (``_read_steps``). ``score_many`` does it for many rows in batches; awaited as a ``StepScorer`` it scores
    step texts. See the module docstring for ``render`` and for ids versus text."""

    _auto = "AutoModelForTokenClassification"

    def _read_steps(self, outputs):
        """``[steps, labels]`` head outputs at the steps' last tokens -> one score per step."""
        raise NotImplementedError

    def score_ids(self, prompt_ids: Sequence[int], steps_ids: Sequence[Sequence[int]]) -> list[float]:
        return self.score_many([(prompt_ids, steps_ids)])[0]

    def score_node_sync(self, tree, node: int) -> float:
        """The score of ``node``'s step, read after the prompt and every step above it (the tree's ids)."""
        from treepref.extract.common import problem_of
        from treepref.tree import ROOT

        steps = [tree.token_ids[n] for n in tree.path(node)]
        return self.score_many([self.row(tree.token_ids[ROOT], steps, problem_of(tree).question)])[0][-1]

    def score_many(self, rows: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> list[list[float]]:
        seqs, positions = [], []
        for n, (prompt, steps) in enumerate(rows):
            ids, pos = [int(t) for t in prompt], []
            for k, s in enumerate(steps):
                if not s:
                    raise ValueError(f"row {n}: step {k} has no token ids")
                ids += [int(t) for t in s]
                pos.append(len(ids) - 1)
            seqs.append(ids)
            positions.append(pos)
        out: list[list[float]] = [[] for _ in rows]
        live = [n for n, pos in enumerate(positions) if pos]
        if live:
            scores = self._run([seqs[n] for n in live], lambda logits, _len: logits)
            for n, logits in zip(live, scores):
                out[n] = self._read_steps(logits[positions[n]]).tolist()
        return out

    def score_texts(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        rows = [(self.prompt_ids(p), [self.step_ids(t) for t in s]) if s else ([], []) for p, s in zip(problems, steps)]
        return self.score_many(rows)


class TrainedPRM(_Stepwise):
    """A stepwise PRM from ``treepref train --method prm``: P(good) = softmax(logits)[1] at the last token of
    every step, in (0, 1)."""

    method = "prm"
    _labels = 2

    def _read_steps(self, outputs):
        return outputs.softmax(-1)[:, 1]


class TrainedPAV(_Stepwise):
    """A process advantage verifier from ``treepref train --method pav``: each step's predicted advantage,
    tanh of the 1-output head at its last token, in [-1, 1] (the trainer fits that tanh to the export's
    ``advantages``). ``score_node`` is the node's own step's advantage, so it ranks siblings; a search that
    compares nodes under different parents sums a path's advantages (the ``pav`` evaluator)."""

    method = "pav"
    _labels = 1

    def _read_steps(self, outputs):
        return outputs[:, 0].tanh()


POLICY_METHODS = ("dpo", "step_apo", "tpo")  # a policy trained against a frozen reference (DPO's implicit reward)


class TrainedQ(_Trained):
    """A policy ``treepref train`` fitted with a DPO-family loss (``dpo``, ``step_apo``, ``tpo``) on step pairs,
    read as a step-level Q-value model (Zhai et al. 2024): Q(s, a) = β·(log π_θ(a|s) − log π_ref(a|s)), the
    implicit reward the loss raised for chosen actions over rejected ones.

    π_ref is the model training started from (the summary's ``base_model``, the reference the loss compared
    with) and β the loss's ``beta``; ``reference`` and ``beta`` override them (and are needed for a folder
    without a summary). ``log_ratios(rows)`` takes ``(context ids, action ids)`` pairs, the ids the policy saw
    and wrote (``Tree.prompt_ids(parent)``, ``Tree.token_ids[child]``); nothing is re-encoded. Both models are
    loaded once; the context's logits are never projected onto the vocabulary where the model allows it
    (``logits_to_keep``), so a long agent transcript costs a forward pass, not a [length, vocabulary] tensor, and
    rows that share a context (a step's k sampled actions) share that pass.
    """

    method = "dpo"
    also = ("step_apo", "tpo")
    _auto = "AutoModelForCausalLM"
    _labels = None

    def __init__(self, folder: str | Path, *, reference: str | None = None, beta: float | None = None,
                 device: str = "cpu", batch_size: int = 8, render: Render | None = None) -> None:
        import torch
        import transformers

        super().__init__(folder, device=device, batch_size=batch_size, render=render)
        summary = read_summary(self.folder) or {}
        reference = reference or summary.get("base_model")
        if not reference:
            raise ValueError(f"{self.folder}: no {SUMMARY} naming its base model; give the reference policy")
        trained_beta = ((summary.get("config") or {}).get("loss") or {}).get("beta")
        if beta is None and trained_beta is None:
            raise ValueError(f"{self.folder}: no {SUMMARY} naming the loss's beta; give beta")
        self.beta = float(beta if beta is not None else trained_beta)
        self.reference_name = str(reference)
        try:
            self.reference = transformers.AutoModelForCausalLM.from_pretrained(
                self.reference_name, dtype=torch.float32).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.folder}: the reference policy {self.reference_name!r} does not load "
                             f"({' '.join(str(exc).split())[:200]})") from None
        self.vocab = self.model.get_input_embeddings().num_embeddings
        if self.reference.get_input_embeddings().num_embeddings != self.vocab:
            raise ValueError(f"{self.folder}: the reference policy {self.reference_name!r} has another vocabulary")
        self.eos_id = self.tokenizer.eos_token_id

    def score_actions(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[float]:
        """Q of each ``(context ids, action ids)``: β times :meth:`log_ratios`."""
        return [self.beta * r for r in self.log_ratios(rows)]

    def log_ratios(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[float]:
        """log π_θ(a|s) − log π_ref(a|s), each summed over the action's tokens (an empty action: 0)."""
        theta, ref = self.action_logps(self.model, rows), self.action_logps(self.reference, rows)
        return [a - b for a, b in zip(theta, ref)]

    def action_logps(self, model, rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[float]:
        """log ``model``(action | context) of each row, summed over the action's tokens."""
        import torch

        seqs = []
        for n, (context, action) in enumerate(rows):
            if not context:
                raise ValueError(f"row {n}: the context has no token ids")
            seq = [int(t) for t in context] + [int(t) for t in action]
            bad = [t for t in seq if not 0 <= t < self.vocab]
            if bad:
                raise ValueError(f"row {n}: token id {bad[0]} is outside the vocabulary of {self.folder} "
                                 f"({self.vocab} ids); the ids come from another tokenizer")
            seqs.append(seq)
        out = [0.0] * len(rows)
        siblings: dict[tuple, list[int]] = {}  # rows by context: a step's k sampled actions share one
        for n, (context, action) in enumerate(rows):
            if len(action):
                siblings.setdefault(tuple(int(t) for t in context), []).append(n)
        live = []
        for context, members in siblings.items():
            if len(members) == 1:
                live += members
                continue
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                for n, value in zip(chunk, self._sibling_logps(model, context, [rows[n][1] for n in chunk])):
                    out[n] = value
        for chunk, ids, mask in self._batches([seqs[n] for n in live]):
            members = [live[i] for i in chunk]
            first = min(len(rows[n][0]) for n in members) - 1  # the first position whose logits predict an action
            keep = ids.shape[1] - first
            with self._lock, torch.inference_mode():
                logp = _last_logits(model, ids, mask, keep).float().log_softmax(-1)
                for k, n in enumerate(members):
                    context, action = rows[n]
                    start = len(context) - 1 - first
                    at = torch.arange(start, start + len(action), device=logp.device)
                    target = torch.tensor([int(t) for t in action], device=logp.device)
                    out[n] = float(logp[k, at, target].sum())
        return out

    def _sibling_logps(self, model, context: tuple[int, ...], actions: Sequence[Sequence[int]]) -> list[float]:
        """log ``model``(action | context) of actions that follow one context (a step's sampled siblings): the
        context runs once and its cache is repeated for the actions, so k siblings after an agent's long
        transcript cost one pass over it, not k."""
        import torch

        k, width = len(actions), max(len(a) for a in actions)
        with self._lock, torch.inference_mode():
            ctx = torch.tensor([list(context)], device=self.device)
            try:  # the context's last position alone projected onto the vocabulary (see _last_logits)
                head = model(input_ids=ctx, use_cache=True, logits_to_keep=1)
            except TypeError:
                head = model(input_ids=ctx, use_cache=True)
            first = head.logits[0, -1].float().log_softmax(-1)  # predicts each action's first token
            out = [float(first[int(a[0])]) for a in actions]
            if width == 1:
                return out
            cache = head.past_key_values
            cache.batch_repeat_interleave(k)
            ids = torch.full((k, width - 1), self.pad_id, dtype=torch.long)  # each action but its last token
            mask = torch.zeros((k, len(context) + width - 1), dtype=torch.long)
            mask[:, :len(context)] = 1
            for i, a in enumerate(actions):
                ids[i, :len(a) - 1] = torch.tensor([int(t) for t in a[:-1]], dtype=torch.long)
                mask[i, len(context):len(context) + len(a) - 1] = 1
            logp = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), past_key_values=cache,
                         use_cache=False).logits.float().log_softmax(-1)
            for i, a in enumerate(actions):
                if len(a) > 1:
                    target = torch.tensor([int(t) for t in a[1:]], device=logp.device)
                    out[i] += float(logp[i, torch.arange(len(a) - 1, device=logp.device), target].sum())
        return out


def _last_logits(model, ids, mask, keep: int):
    """The logits of each row's last ``keep`` padded positions: ``logits_to_keep`` where the model takes it, so
    the context is not projected onto the vocabulary; else all of them, sliced."""
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    except TypeError:  # a model class without logits_to_keep
        logits = model(input_ids=ids, attention_mask=mask).logits
    return logits[:, -keep:]


def load_q_model(folder: str | Path, **options) -> TrainedQ:
    """The policy in ``folder`` (``OUT/model``, or ``OUT`` itself) as a Q-value model; ``options`` go to
    :class:`TrainedQ` (``reference``, ``beta``, ``device``, ``batch_size``)."""
    return TrainedQ(model_folder(folder), **options)


def load_trained(folder: str | Path, **options) -> TrainedVerifier | TrainedPRM | TrainedPAV:
    """The trained verifier in ``folder`` (``OUT/model``, or ``OUT`` itself), by its summary's ``"method"``.

    ``options`` go to the class (``device``, ``batch_size``, ``render``). A folder without
    ``treepref-train.json``, or trained with another method (a policy), is a ``ValueError`` naming it.
    """
    folder = model_folder(folder)
    method = read_method(folder)
    if method is None:
        raise ValueError(f"{folder}: no {SUMMARY}; not a folder saved by `treepref train`")
    classes = {"verifier": TrainedVerifier, "prm": TrainedPRM, "pav": TrainedPAV}
    if method not in classes:
        raise ValueError(f"{folder}: trained with method {method!r}, not a verifier "
                         f"(load_trained reads {' or '.join(map(repr, classes))})")
    return classes[method](folder, **options)
