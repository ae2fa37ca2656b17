"""Step-by-step reasoning: a state is the question plus the steps so far; a step ends at a delimiter."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Awaitable, Callable

from treepref.envs.base import State, Transition
from treepref.few_shot import Shot, shot_messages
from treepref.problems import Problem

DEFAULT_SYSTEM = ("Solve the problem step by step. Write each step as a short paragraph and separate steps "
                  "with a blank line. End with a final line of the form 'The answer is N.'")

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

OutcomeVerifier = Callable[[Problem, str], Awaitable[float | None]]


def plain_template(messages: list[dict]) -> str:
    """A chat template for policies without a tokenizer (the scripted policy)."""
    parts = [f"<{m['role']}>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<assistant>\n"


@dataclass
class ReasoningEnv:
    """Reasoning as an environment.

    ``template`` turns chat messages into the prompt text (use the policy's ``chat_prompt`` so the model's
    own chat template is applied). A state is terminated when a step states a final answer (``answer_pattern``,
    first group is the answer; ``\\boxed{}`` is always recognised) or the model ends the sequence, and
    truncated at ``max_depth`` steps or ``max_tokens`` generated tokens. A terminated state is rewarded by
    ``verifier`` (1.0 right, 0.0 wrong, None when there is no reference answer). When the model ends the
    sequence without the answer phrase, the last number of its last step is taken as its answer (the usual
    GSM8K-style reading; small models often finish with "so 13 + 3 = 16."), unless
    ``last_number_fallback`` is off. ``few_shot`` worked examples go before the problem as earlier chat
    turns, their steps joined with ``delimiter``.
    """

    template: Callable[[list[dict]], str] = plain_template
    verifier: OutcomeVerifier | None = None
    delimiter: str = "\n\n"
    answer_pattern: str = r"answer is[:\s]*\$?([^\n$]*?)\$?\s*\.?\s*$"
    system: str | None = DEFAULT_SYSTEM
    max_depth: int = 8
    max_tokens: int = 1024
    last_number_fallback: bool = True  # when the model ends without stating an answer, take the last number
    few_shot: tuple[Shot, ...] = ()

    def __post_init__(self) -> None:
        self._answer_re = re.compile(self.answer_pattern, re.IGNORECASE | re.MULTILINE)
        if self.verifier is None:
            from treepref.verifiers.math import MathVerifier

            self.verifier = MathVerifier()

    @property
    def stop(self) -> tuple[str, ...]:
        return (self.delimiter,)

    def initial(self, problem: Problem) -> State:
        return State(problem=problem)

    def prompt(self, problem: Problem) -> str:
        return self.template(problem.messages(self.system, shot_messages(self.few_shot, self.delimiter)))

    def render(self, state: State) -> str:
        return self.prompt(state.problem) + "".join(s + self.delimiter for s in state.steps)

    def final_answer(self, text: str) -> str | None:
        from treepref.verifiers.math import extract_boxed

        boxed = extract_boxed(text)
        if boxed is not None:
            return boxed
        match = self._answer_re.search(text)
        return match.group(1).strip() if match and match.group(1).strip() else None

    def clean(self, action: str) -> str:
        if action.endswith(self.delimiter):
            action = action[: -len(self.delimiter)]
        return action.strip()

    def split_steps(self, text: str) -> list[str]:
        return [s.strip() for s in text.split(self.delimiter) if s.strip()]

    async def step(self, state: State, action: str, *, n_tokens: int = 0, ended: bool = False) -> Transition:
        text = self.clean(action)
        new = State(state.problem, state.steps + (text,), state.n_tokens + n_tokens, state.data)
        answer = self.final_answer(text)
        if answer is None and ended and self.last_number_fallback:
            numbers = _NUMBER.findall(text.replace(",", ""))
            answer = numbers[-1] if numbers else None
        terminated = answer is not None or ended
        reward = None
        if terminated:
            reward = 0.0 if answer is None else await self.verifier(state.problem, answer)
        truncated = not terminated and (new.depth >= self.max_depth or new.n_tokens >= self.max_tokens)
        return Transition(new, reward, terminated, truncated, {"answer": answer})
