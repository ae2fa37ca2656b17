"""A deterministic policy for testing search logic: the next steps come from a script, not a model.

``script`` maps the steps written so far (a tuple of step texts) to the candidate next steps. Each
candidate is a text or a (text, logprob) pair; the ``n`` completions of a request cycle through the
candidates in order, so a test knows exactly which children a search will see. A candidate ending in
``EOS`` ends the sequence the way a model's end-of-sequence token does. Tokens are whitespace words.
"""

from __future__ import annotations

import zlib
from typing import Callable, Mapping, Sequence

from treepref.backends.base import Completion, GenerationStats, Sampling, truncate_at_stop
from treepref.envs.reasoning import plain_template

EOS = "<eos>"
Candidate = str | tuple[str, float]
Script = Callable[[tuple[str, ...]], Sequence[Candidate]] | Mapping[tuple[str, ...], Sequence[Candidate]]


class ScriptedPolicy:
    """Replays a script. The prompt is parsed back into steps with ``delimiter`` after ``chat_prompt``."""

    def __init__(self, script: Script, *, delimiter: str = "\n\n", default: Sequence[Candidate] = ()):
        self._script = script
        self.delimiter = delimiter
        self.default = list(default)
        self.stats = GenerationStats()
        self.calls: list[tuple[list[str], Sampling]] = []  # every request, for tests of batching

    def chat_prompt(self, messages: list[dict]) -> str:
        return plain_template(messages)

    def count_tokens(self, text: str) -> int:
        return len(text.replace(EOS, "").split())

    def _steps(self, prompt: str) -> tuple[str, ...]:
        _, sep, body = prompt.rpartition("<assistant>\n")
        if not sep or not body:
            return ()
        return tuple(s.strip() for s in body.split(self.delimiter) if s.strip())

    def candidates(self, steps: tuple[str, ...]) -> list[Candidate]:
        if callable(self._script):
            return list(self._script(steps))
        return list(self._script.get(steps, self.default))

    async def generate(self, prompts: Sequence[str], params: Sampling) -> list[list[Completion]]:
        self.calls.append((list(prompts), params))
        out = [[self._complete(prompt, i, params) for i in range(params.n)] for prompt in prompts]
        self.stats.record(prompts, params, out)
        return out

    def _complete(self, prompt: str, i: int, params: Sampling) -> Completion:
        steps = self._steps(prompt)
        cands = self.candidates(steps)
        if not cands:
            return Completion("", (), 0.0, "stop", None)
        if params.stop:  # one step per request
            text, logprob = _unpack(cands[i % len(cands)])
            ended = text.endswith(EOS)
            text = text.removesuffix(EOS)
            body = text if ended else text + self.delimiter
        else:  # a whole completion: follow the script, choosing candidate i at the first step, then 0
            parts, logprob, ended, cur, choice = [], 0.0, False, steps, i
            for _ in range(64):
                cands = self.candidates(cur)
                if not cands:
                    ended = True
                    break
                text, lp = _unpack(cands[choice % len(cands)])
                choice = 0
                logprob += lp
                if text.endswith(EOS):
                    parts.append(text.removesuffix(EOS))
                    ended = True
                    break
                parts.append(text)
                cur = cur + (text,)
            body = self.delimiter.join(parts)
        words = body.split()[: params.max_tokens]
        truncated = len(body.split()) > params.max_tokens
        if truncated:
            body = " ".join(words)
        body, stop_reason = truncate_at_stop(body, params.stop)
        ids = tuple(zlib.crc32(w.encode()) % 50_000 for w in body.split())
        finish = "length" if truncated and stop_reason is None else "stop"
        if not ended and stop_reason is None and finish == "stop" and params.stop:
            finish = "length"
        return Completion(body, ids, logprob, finish, stop_reason)


def _unpack(c: Candidate) -> tuple[str, float]:
    if isinstance(c, tuple):
        return c[0], float(c[1])
    return c, -1.0 * max(len(c.split()), 1)
