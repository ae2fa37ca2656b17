"""treepref: LLM tree search turned into step-level preference data."""

__version__ = "0.1.0"
