"""A scripted backend for whole runs without a model: it knows the built-in arithmetic problems' steps.

``TutorPolicy`` is a ``ScriptedPolicy`` whose script reads the question too: at each depth it offers the
problem's right step and a slip (the result off by one), and at the end the right answer and a wrong one, so
a search finds both successes and failures and the exports have pairs. It is built the way a registered
backend is (``TutorPolicy(model=..., **options)``), so a recipe names it with ``model.backend`` once
``tutor_backend`` (below) has registered it: a run goes through the same code as with a real model.

``ModelTutor`` writes the same steps in the tokenizer of its ``model.name`` folder, and ``save_byte_model`` makes
such a folder without the embedded model: a byte-level tokenizer and a 2-layer Llama that ``treepref train`` can
fine-tune, so a trained scorer reads the ids of the tutor's trees (ids of the toy ``PLAIN`` tokenizer are
hashes up to 10⁹, too many for an embedding table).
"""

from __future__ import annotations

import functools

from treepref.backends.scripted import EOS, ScriptedPolicy

NAME = "tutor"


@functools.lru_cache(maxsize=1)
def solutions() -> dict[str, list[str]]:
    """Question -> its steps, for the built-in problems of seed 0 (the recipes' seed) at every difficulty."""
    from treepref.domains.arithmetic import generate

    return {p.prompt: p.meta["steps"] for d in (1, 2, 3) for p in generate(64, seed=0, difficulty=d)}


def slip(step: str) -> str:
    """The step with its result off by one: false arithmetic the step check catches."""
    lhs, _, rhs = step.rpartition("= ")
    return f"{lhs}= {int(rhs) + 1}"


def script(state: tuple[str, ...]) -> list[str]:
    question, steps = state[0], state[1:]
    solution = solutions().get(question)
    if not solution:
        return ["The answer is 0." + EOS]
    answer = int(solution[-1].rpartition("= ")[2])
    if len(steps) < len(solution):
        right = solution[len(steps)]
        return [right, slip(right)]
    return [f"The answer is {answer}." + EOS, f"The answer is {answer + 1}." + EOS]


class TutorPolicy(ScriptedPolicy):
    """Right steps and slips for the built-in arithmetic problems (see the module's docstring)."""

    built = 0  # how many were constructed (a finished run builds none)

    def __init__(self, model: str | None = None, **options) -> None:
        super().__init__(script)
        TutorPolicy.built += 1

    def _steps(self, prompt) -> tuple[str, ...]:
        """The question, then the steps written so far (the script needs both)."""
        text = prompt if isinstance(prompt, str) else self.decode(prompt)
        question = text.rpartition("<user>\n")[2].partition("\n<assistant>")[0]
        return (question, *super()._steps(prompt))


class ModelTutor(TutorPolicy):
    """The tutor in the tokenizer saved in its ``model`` folder (``save_byte_model``'s, or any Hugging Face one)."""

    def __init__(self, model: str | None = None, **options) -> None:
        super().__init__(model, **options)
        self.tokenizer = FolderTokenizer(model)


class FolderTokenizer:
    """A Hugging Face tokenizer as ``tokens.Tokenizer``: no special tokens added, text decoded as it was."""

    def __init__(self, folder: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, token_ids) -> str:
        return self.tok.decode(list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def save_byte_model(folder, seed: int = 0) -> str:
    """A byte-level tokenizer (256 bytes, EOS, pad) and a random 2-layer Llama with hidden size 64 over it, saved
    in ``folder``: the smallest model ``treepref train`` can start from, built without the embedded SmolLM2."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"<|endoftext|>": len(vocab), "<pad>": len(vocab) + 1})
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<pad>",
                                  clean_up_tokenization_spaces=False)
    torch.manual_seed(seed)
    # Hidden size 64: at 16, some initialisations of a new head never told two steps apart that differ only a
    # few bytes before the token read (a step's last "\n").
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def register(name: str = NAME, cls: type = TutorPolicy):
    """Register ``cls`` as the backend ``name`` (``model.backend: tutor``); returns what removes it again."""
    from treepref.backends import BACKENDS

    BACKENDS.register(name, cls)
    return lambda: BACKENDS.entries.pop(name, None)
