"""Where the searches of a run execute: ``local`` (``treepref.runner.run_problems``, one policy, one event loop)
or ``ray`` (``treepref.executors.ray``: problems sharded over Ray actors, each holding its own policy).

Every executor writes the same run folder (one tree file per problem, ``errors.jsonl``, the same summary), so
resume, failure records and exports do not depend on where the trees were searched.
"""

from __future__ import annotations

EXECUTORS = ("local", "ray")


class ExecutorError(RuntimeError):
    """An executor cannot run the searches at all (no cluster, actors that cannot start): one line. The problems
    it did not reach are not failures of their own; a rerun resumes."""


class MissingExtra(ImportError, ValueError):
    """An executor's optional dependency is not installed; the message is the one line that says what to do (a
    ValueError too, so ``generate`` reports it as a user mistake before the run folder is touched)."""


def require_ray():
    """The ``ray`` module, imported only when the Ray executor is asked for."""
    try:
        import ray
    except ImportError:
        raise MissingExtra("run.executor: ray needs the ray package: pip install 'treepref[ray]' "
                           "(or pip install 'ray>=2.9')") from None
    return ray


__all__ = ["EXECUTORS", "ExecutorError", "MissingExtra", "require_ray"]
