"""A deterministic policy for testing search logic: the next steps come from a script, not a model.

``script`` maps the steps written so far (a tuple of step texts) to the candidate next steps. Each
candidate is a text or a (text, logprob) pair; the ``n`` completions of a request cycle through the
candidates in order, so a test knows exactly which children a search will see. A candidate ending in
``EOS`` ends the sequence the way a model's end-of-sequence token does. Tokens come from the reversible
``tokens.PLAIN`` tokenizer (a word with its trailing whitespace), or the ``tokenizer`` given (one whose ids a
small test model can read), and prompts may be text or its ids.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from treepref.backends.base import Completion, GenerationStats, Prompt, Sampling, truncate_at_stop
from treepref.envs.reasoning import plain_template
from treepref.tokens import PLAIN, Tokenizer

EOS = "<eos>"
Candidate = str | tuple[str, float]
Script = Callable[[tuple[str, ...]], Sequence[Candidate]] | Mapping[tuple[str, ...], Sequence[Candidate]]


class ScriptedPolicy:
    """Replays a script. The prompt is parsed back into steps with ``delimiter`` after ``chat_prompt``."""

    def __init__(self, script: Script, *, delimiter: str = "\n\n", default: Sequence[Candidate] = (),
                 tokenizer: Tokenizer = PLAIN):
        self._script = script
        self.tokenizer = tokenizer
        self.delimiter = delimiter
        self.default = list(default)
        self.stats = GenerationStats()
        self.calls: list[tuple[list[str], Sampling]] = []  # every request, for tests of batching

    def chat_prompt(self, messages: list[dict]) -> str:
        return plain_template(messages)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, token_ids) -> str:
        return self.tokenizer.decode(list(token_ids))

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text.replace(EOS, "")))

    def _steps(self, prompt: Prompt) -> tuple[str, ...]:
        if not isinstance(prompt, str):
            prompt = self.decode(prompt)
        _, sep, body = prompt.rpartition("<assistant>\n")
        if not sep or not body:
            return ()
        return tuple(s.strip() for s in body.split(self.delimiter) if s.strip())

    def candidates(self, steps: tuple[str, ...]) -> list[Candidate]:
        if callable(self._script):
            return list(self._script(steps))
        return list(self._script.get(steps, self.default))

    async def generate(self, prompts: Sequence[Prompt], params: Sampling) -> list[list[Completion]]:
        self.calls.append((list(prompts), params))
        out = [[self._complete(prompt, i, params) for i in range(params.n)] for prompt in prompts]
        self.stats.record(prompts, params, out)
        return out

    def _complete(self, prompt: Prompt, i: int, params: Sampling) -> Completion:
        steps = self._steps(prompt)
        cands = self.candidates(steps)
        if not cands:
            return Completion("", (), 0.0, "stop", None)
        # (text, log-prob) of each part; a part's log-prob is spread evenly over its tokens
        if params.stop:  # one step per request
            text, logprob = _unpack(cands[i % len(cands)])
            ended = text.endswith(EOS)
            text = text.removesuffix(EOS)
            parts = [(text if ended else text + self.delimiter, logprob)]
        else:  # a whole completion: follow the script, choosing candidate i at the first step, then 0
            parts, ended, cur, choice = [], False, steps, i
            for _ in range(64):
                cands = self.candidates(cur)
                if not cands:
                    ended = True
                    break
                text, lp = _unpack(cands[choice % len(cands)])
                choice = 0
                if text.endswith(EOS):
                    parts.append((text.removesuffix(EOS), lp))
                    ended = True
                    break
                parts.append((text + self.delimiter, lp))
                cur = cur + (text,)
            if parts and not ended:
                parts[-1] = (parts[-1][0].removesuffix(self.delimiter), parts[-1][1])
        ids, lps = [], []
        for text, lp in parts:
            part = self.encode(text)
            ids.extend(part)
            lps.extend([lp / len(part)] * len(part) if part else [])
        truncated = len(ids) > params.max_tokens
        ids, lps = ids[: params.max_tokens], lps[: params.max_tokens]
        body, stop_reason = truncate_at_stop(self.decode(ids), params.stop)
        if stop_reason is not None:  # keep the tokens up to the one that completed the stop string
            keep = next(k for k in range(1, len(ids) + 1) if len(self.decode(ids[:k])) >= len(body))
            ids, lps = ids[:keep], lps[:keep]
        finish = "length" if truncated and stop_reason is None else "stop"
        if not ended and stop_reason is None and finish == "stop" and params.stop:
            finish = "length"
        return Completion(body, tuple(ids), float(sum(lps)), finish, stop_reason, tuple(lps))


def _unpack(c: Candidate) -> tuple[str, float]:
    if isinstance(c, tuple):
        return c[0], float(c[1])
    return c, -1.0 * max(len(c.split()), 1)
