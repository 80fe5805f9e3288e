"""mixer: exact, verifiable data mixes for specialized-pretraining studies.

The Python API (docs/api.md) is imported lazily, so `import mixer` stays instant:

    from mixer import tokenize, plan, build, verify, audit, pretrain, finetune, evaluate, report, fit
"""

__version__ = "0.1.0"

API = ("tokenize", "plan", "build", "verify", "audit", "pretrain", "finetune", "evaluate", "report", "fit")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from mixer import api

        return getattr(api, name)
    raise AttributeError(f"module 'mixer' has no attribute {name!r}")
