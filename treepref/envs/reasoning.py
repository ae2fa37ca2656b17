"""Step-by-step reasoning: a state is the question plus the steps so far; a step ends at a delimiter."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from treepref.envs.base import State, Transition
from treepref.few_shot import Shot, shot_messages
from treepref.problems import Problem
from treepref.tokens import PLAIN, Piece, Tokenizer, spelled, split_completion, step_ids
from treepref.verifiers import OutcomeVerifier

DEFAULT_SYSTEM = ("Solve the problem step by step. Write each step as a short paragraph and separate steps "
                  "with a blank line. End with a final line of the form 'The answer is N.'")



def plain_template(messages: list[dict]) -> str:
    """A chat template for policies without a tokenizer (the scripted policy)."""
    parts = [f"<{m['role']}>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<assistant>\n"


@dataclass
class ReasoningEnv:
    """Reasoning as an environment.

    ``template`` turns chat messages into the prompt text (use the policy's ``chat_prompt`` so the model's
    own chat template is applied) and ``tokenizer`` (anything with ``encode``/``decode``; left None, a
    ``SearchContext`` binds the policy's) turns it into ids once; after that a state's ids grow only by
    the ids the policy generated.

    A state is terminated when a step states a final answer or the model ends the sequence, and truncated
    at ``max_depth`` steps or ``max_tokens`` generated tokens. Answers are read by
    ``verifiers.math.read_answer`` (``answer_pattern``, a user's regex, is tried first); when the model ends
    the sequence without stating one, the value its last step concludes with is its answer (small models
    often finish with "so 13 + 3 = 16."; an operand is never taken), unless ``last_number_fallback`` is off.
    A terminated state is rewarded by ``verifier`` (1.0 right, 0.0 wrong, None without a reference answer).
    ``step_check`` (``verifiers.step_check``: ``arithmetic``, ``arithmetic_grounded`` or ``module:function``,
    called with the problem, the step and the steps before it) checks each step as it is
    taken: a step stating something false ends the episode with reward 0 (``info["step_check"] = False``; a
    true step records True, one that states nothing checkable None),
    so a right answer reached through false arithmetic is not a success and no more tokens go below it.
    ``few_shot`` worked examples go before the problem as earlier chat turns, their steps joined with
    ``delimiter``.
    """

    name = "reasoning"
    default_problems = "arithmetic"  # the problems source a recipe naming it gets by default

    template: Callable[[list[dict]], str] = plain_template
    tokenizer: Tokenizer | None = None  # None: the policy's (``SearchContext`` binds it); alone, the toy PLAIN
    verifier: OutcomeVerifier | None = None
    delimiter: str = "\n\n"
    answer_pattern: str | None = None  # a user's own regex (first group = the answer), tried first
    system: str | None = DEFAULT_SYSTEM
    max_depth: int = 8
    max_tokens: int = 1024
    last_number_fallback: bool = True  # when the model ends without stating an answer, take the last number
    few_shot: tuple[Shot, ...] = ()
    step_check: str | None = None  # a check of each step's own claims (``verifiers.step_check``); None: off

    def __post_init__(self) -> None:
        self._check = None
        if self.step_check is not None:
            from treepref.verifiers.step_check import load_step_check

            self._check = load_step_check(self.step_check)
        self._answer_re = re.compile(self.answer_pattern, re.IGNORECASE | re.MULTILINE) if self.answer_pattern else None
        if self.verifier is None:
            from treepref.verifiers.math import MathVerifier

            self.verifier = MathVerifier()

    def step_key(self, text: str) -> str:
        """Two steps are one step when they differ only in spaces, case or a closing period ("3+4=7" and
        "3 + 4 = 7."): the search merges such siblings (``search.base.add_step``) and counts them."""
        return "".join(text.split()).casefold().rstrip(".")

    @property
    def tokens(self) -> Tokenizer:
        return self.tokenizer if self.tokenizer is not None else PLAIN

    @property
    def stop(self) -> tuple[str, ...]:
        return (self.delimiter,)

    def initial(self, problem: Problem) -> State:
        text = self.prompt(problem)
        return State(problem=problem, token_ids=tuple(self.tokens.encode(text)), text=text)

    def messages(self, problem: Problem) -> list[dict]:
        """The prompt as chat messages: the system message, the worked examples, then the problem."""
        return problem.messages(self.system, shot_messages(self.few_shot, self.delimiter))

    def prompt(self, problem: Problem) -> str:
        return self.template(self.messages(problem))

    def render(self, state: State) -> tuple[int, ...]:
        return state.token_ids

    def render_text(self, state: State) -> str:
        if state.text or not state.steps:
            return state.text or self.prompt(state.problem)
        return self.prompt(state.problem) + "".join(s + self.delimiter for s in state.steps)  # a hand-made state

    def final_answer(self, text: str, ended: bool = False) -> str | None:
        """The answer a step states (``verifiers.math.read_answer``, the one rule); when the model ended the
        sequence without stating one, the value the step concludes with, never an operand."""
        from treepref.verifiers.math import read_answer

        return read_answer(text, ended=ended and self.last_number_fallback, pattern=self._answer_re)

    def clean(self, action: str) -> str:
        if action.endswith(self.delimiter):
            action = action[: -len(self.delimiter)]
        return action.strip()

    def split(self, text: str, token_ids: Sequence[int], token_logprobs: Sequence[float] = (),
              logprob: float = 0.0) -> list[Piece]:
        return split_completion(text, token_ids, token_logprobs, logprob, self.delimiter, self.tokens.decode)

    async def step(self, state: State, action: str, *, token_ids: Sequence[int] | None = None,
                   ended: bool = False) -> Transition:
        text = self.clean(action)
        if token_ids is None:  # a step given as text: encode it the way it reads inside running text
            rendered = text if ended else text + self.delimiter
            token_ids = step_ids(self.tokens, rendered)
        else:  # as the policy wrote it: the text its ids spell, stop string included
            rendered = spelled(self.tokens, token_ids, action)
        new = State(state.problem, state.steps + (text,), state.n_tokens + len(token_ids), state.data,
                    state.token_ids + tuple(token_ids), self.render_text(state) + rendered)
        answer = self.final_answer(text, ended=ended)
        info = {"answer": answer}
        if self._check is not None:
            # the verdict on what the step states: False ends the path, None means it states nothing checkable
            info["step_check"] = self._check(state.problem, text, state.steps)
            if info["step_check"] is False:
                return Transition(new, 0.0, True, False, info)
        terminated = answer is not None or ended
        reward = None
        if terminated:
            reward = 0.0 if answer is None else await self.verifier(state.problem, answer)
        truncated = not terminated and (new.depth >= self.max_depth or new.n_tokens >= self.max_tokens)
        return Transition(new, reward, terminated, truncated, info)
