"""Writing a function, step by step: the policy continues the code it is given; tests run in the sandbox.

The state is a chat prompt whose assistant turn already holds the start of the answer: a ``python`` fence
and the problem's code (HumanEval's signature and docstring, MBPP's ``def`` line), cut where the model
itself would start the body. SmolLM2 writes a newline and the indentation as one token (``"\\n   "``), so
the context ends on that token, never on a bare newline the model would not write there.

A step ends at ``boundary``: ``blank_line`` (a step is a paragraph of code) or ``statement`` (a step is
one statement of the function's body, a compound one with everything nested in it). The episode ends when
the body ends (a line back at column 0: a closing fence, another ``def``, prose) or at end of sequence;
what follows the body is not part of the solution. The reward comes from ``verifiers.sandbox``: 1 when
every test passes, else 0 (``reward: share`` gives the share of tests passed); the node's ``info`` holds
the per-test results. Truncated (depth or token budget) episodes are not run.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable, Sequence

from treepref.envs.base import State, Transition
from treepref.envs.reasoning import plain_template
from treepref.problems import Problem
from treepref.tokens import PLAIN, Piece, Tokenizer, spelled, split_completion, step_ids
from treepref.verifiers.sandbox import CodeVerifier, Limits

DEFAULT_SYSTEM = "You are an expert Python programmer. Complete the function. Reply with code only."
BOUNDARIES = ("blank_line", "statement")
REWARDS = ("pass", "share")
_STARTS = [c for c in string.printable if not c.isspace()]


@dataclass
class CodeEnv:
    """Code completion as an environment (``env.name: code``). See the module docstring.

    ``indent`` is the body's indentation (the statement boundary is a line at exactly that depth);
    ``cpu_s``, ``wall_s`` and ``memory_mb`` bound one run of the tests; ``workers`` sandbox runs go on at
    once (default: one per CPU) while generation continues."""

    name = "code"
    default_problems = "humaneval"  # the problems source a recipe naming it gets by default
    interactive = False
    reward_range = (0.0, 1.0)

    template: Callable[[list[dict]], str] = plain_template
    tokenizer: Tokenizer | None = None
    system: str | None = DEFAULT_SYSTEM
    boundary: str = "blank_line"
    reward: str = "pass"
    indent: int = 4
    max_depth: int = 12
    max_tokens: int = 384
    cpu_s: int = 2  # HumanEval's reference solutions take well under a second; a loop that never ends costs this
    wall_s: float = 6.0
    memory_mb: int = 512
    workers: int | None = None
    verifier: CodeVerifier | None = None

    def __post_init__(self) -> None:
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if self.verifier is None:
            self.verifier = CodeVerifier(Limits(cpu_s=self.cpu_s, wall_s=self.wall_s, memory_mb=self.memory_mb),
                                         workers=self.workers)
        body = "\n" + " " * self.indent
        ends = tuple("\n" + c for c in _STARTS)  # the body is over: a line at column 0
        self.episode_stop = ends  # where a Monte Carlo completion stops (``search.base.rollouts``)
        self._stop = (ends + tuple(body + c for c in _STARTS) if self.boundary == "statement"
                      else ("\n\n",) + ends)
        self._split_at = re.compile(r"\n(?=" + " " * self.indent + r"\S)") if self.boundary == "statement" else "\n\n"

    def require_ready(self) -> None:
        """Refuse now, one line (``SandboxUnavailable``), where the sandbox's boundary cannot be set up: a run
        would otherwise fail every problem at its first verdict (``envs.probe_env`` calls it)."""
        self.verifier.require_boundary()

    @property
    def tokens(self) -> Tokenizer:
        return self.tokenizer if self.tokenizer is not None else PLAIN

    @property
    def stop(self) -> tuple[str, ...]:
        return self._stop

    # -- the prompt ------------------------------------------------------------------------------------
    def messages(self, problem: Problem) -> list[dict]:
        meta = problem.meta or {}
        if meta.get("layout") == "humaneval":
            task = f"Complete this Python function.\n\n```python\n{meta['code'].rstrip()}\n```"
        else:
            task = f"{problem.question}\n\nComplete this Python function.\n\n```python\n{meta.get('code', '').rstrip()}\n```"
        return Problem(problem.id, task).messages(self.system)

    def _head(self, problem: Problem) -> str:
        return self.template(self.messages(problem)) + "```python\n" + (problem.meta or {}).get("code", "").rstrip()

    def _start(self, problem: Problem) -> tuple[str, tuple[int, ...], str]:
        """The prompt's text and ids, and the part of it past the code (the body's start): the chat turns,
        then the fence and the code, ending where the model writes the body's first token (the ids of code +
        newline + indentation, cut before the first token that would already be the body's)."""
        head = self._head(problem)
        lead = head + "\n" + " " * self.indent
        ids = self.tokens.encode(lead + "pass")
        keep = len(ids)
        while keep > 0 and not lead.startswith(self.tokens.decode(ids[:keep])):
            keep -= 1
        ids = tuple(ids[:keep])
        if not self.tokens.decode(list(ids)).startswith(head):  # a tokenizer that does not round-trip
            ids = tuple(self.tokens.encode(head))
        text = self.tokens.decode(list(ids))
        return text, ids, text[len(head):] if text.startswith(head) else ""

    def initial(self, problem: Problem) -> State:
        text, ids, body = self._start(problem)
        return State(problem=problem, token_ids=ids, text=text, data=body)

    def render(self, state: State) -> tuple[int, ...]:
        return state.token_ids

    def render_text(self, state: State) -> str:
        return state.text or self._start(state.problem)[0]

    def split(self, text: str, token_ids: Sequence[int], token_logprobs: Sequence[float] = (),
              logprob: float = 0.0) -> list[Piece]:
        return split_completion(text, token_ids, token_logprobs, logprob, self._split_at, self.tokens.decode)

    # -- a step ----------------------------------------------------------------------------------------
    def solution(self, problem: Problem, body: str) -> tuple[str, bool]:
        """(the code to test, whether the function is finished): the problem's code, then the body (all the
        context after it) up to the first line back at column 0."""
        head = (problem.meta or {}).get("code", "").rstrip()
        lines = body.split("\n")
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() and not line[0].isspace():
                return head + "\n".join(lines[:i]) + "\n", True
        return head + body + "\n", False

    async def step(self, state: State, action: str, *, token_ids: Sequence[int] | None = None,
                   ended: bool = False) -> Transition:
        if token_ids is None:  # a step given as text
            token_ids = step_ids(self.tokens, action)
        elif self.boundary == "statement" and not ended:
            # the token that completed the stop string is the next statement's first: it is not this step's
            pieces = self.split(action, token_ids)
            token_ids = pieces[0].token_ids if pieces else token_ids
        rendered = spelled(self.tokens, token_ids, action)
        body = state.data + rendered
        new = State(state.problem, state.steps + (rendered.rstrip(),), state.n_tokens + len(token_ids), body,
                    state.token_ids + tuple(token_ids), self.render_text(state) + rendered)
        code, finished = self.solution(state.problem, body)
        terminated = finished or ended
        if not terminated:
            truncated = new.depth >= self.max_depth or new.n_tokens >= self.max_tokens
            return Transition(new, None, False, truncated, {})
        result = await self.verifier.run(state.problem, code)
        if result is None:  # a problem without tests
            return Transition(new, None, True, False, {})
        reward = result.pass_rate if self.reward == "share" else float(result.passed)
        info = {"success": result.passed, "passed": result.n_tests - len(result.failed), "n_tests": result.n_tests,
                "error": result.error, "tests": result.tests}
        return Transition(new, reward, True, False, info)
