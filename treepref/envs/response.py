"""A whole response as one action: the environment of refinement searches (SPaR) and of any method that
compares complete answers rather than steps.

The state is the chat-templated prompt; the one step is the response, so every step ends the episode.
A response is rewarded by ``verifier`` (by default the share of the instruction task's constraints it
satisfies) and succeeds when every constraint holds, IFEval's strict prompt-level rule: a partial score
is a useful value but not a success.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from treepref.envs.base import State, Transition
from treepref.envs.reasoning import plain_template
from treepref.problems import Problem
from treepref.tokens import PLAIN, Piece, Tokenizer, spelled, step_ids
from treepref.verifiers import OutcomeVerifier



@dataclass
class ResponseEnv:
    """One response per episode.

    ``template`` and ``tokenizer`` work as in ``ReasoningEnv`` (a ``SearchContext`` binds the policy's
    tokenizer when it is None). ``verifier(problem, response)`` gives the reward (default:
    ``domains.instructions.instruction_reward``). ``info["success"]`` is whether every constraint of the
    problem holds (``domains.instructions.passes``); for a problem without constraints it is left to the
    reward (``envs.base.is_success``).
    """

    name = "response"
    default_problems = "instructions"  # the problems source a recipe naming it gets by default
    interactive = False
    reward_range = (0.0, 1.0)
    stop = ()  # a response ends where the model ends it

    template: Callable[[list[dict]], str] = plain_template
    tokenizer: Tokenizer | None = None
    verifier: OutcomeVerifier | None = None
    system: str | None = None  # instruction tasks carry everything in the user's turn

    def __post_init__(self) -> None:
        if self.verifier is None:
            from treepref.domains.instructions import instruction_reward

            self.verifier = instruction_reward

    @property
    def tokens(self) -> Tokenizer:
        return self.tokenizer if self.tokenizer is not None else PLAIN

    def messages(self, problem: Problem) -> list[dict]:
        return problem.messages(self.system)

    def prompt(self, problem: Problem) -> str:
        return self.template(self.messages(problem))

    def initial(self, problem: Problem) -> State:
        text = self.prompt(problem)
        return State(problem=problem, token_ids=tuple(self.tokens.encode(text)), text=text)

    def render(self, state: State) -> tuple[int, ...]:
        return state.token_ids

    def render_text(self, state: State) -> str:
        return state.text or self.prompt(state.problem)

    def split(self, text: str, token_ids: Sequence[int], token_logprobs: Sequence[float] = (),
              logprob: float = 0.0) -> list[Piece]:
        return [Piece(text, tuple(token_ids), logprob, True)]  # a response is never cut

    async def step(self, state: State, action: str, *, token_ids: Sequence[int] | None = None,
                   ended: bool = False) -> Transition:
        # The context keeps the response as generated; the node's text (what judges and people read) is
        # stripped, so two samples differing only in surrounding whitespace merge.
        if token_ids is None:
            token_ids, rendered = step_ids(self.tokens, action), action
        else:
            rendered = spelled(self.tokens, token_ids, action)  # the text the ids spell
        text = action.strip()
        new = State(state.problem, state.steps + (text,), state.n_tokens + len(token_ids), state.data,
                    state.token_ids + tuple(token_ids), self.render_text(state) + rendered)
        reward = await self.verifier(state.problem, text)
        return Transition(new, reward, True, False, {"success": _success(state.problem, text)})


def _success(problem: Problem, response: str) -> bool | None:
    if "constraints" not in (problem.meta or {}):
        return None
    from treepref.domains.instructions import passes

    return passes(problem, response)
