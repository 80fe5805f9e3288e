"""mixer: exact, verifiable data mixes for specialized-pretraining studies.

The Python API (docs/api.md) is imported lazily, so `import mixer` stays instant:

    from mixer import tokenize, plan, build, verify, audit, pretrain, finetune, evaluate, report, fit, similarity
    from mixer import forecast  # `mixer plan --fit`
    from mixer import pretrain_plan, finetune_plan, PretrainConfig, FinetuneConfig, Machine
"""

__version__ = "0.1.0"

API = ("tokenize", "plan", "build", "verify", "audit", "pretrain", "pretrain_plan", "finetune", "finetune_plan",
       "evaluate", "report", "fit", "forecast", "similarity")
CONFIGS = ("PretrainConfig", "FinetuneConfig", "Machine")
__all__ = ["__version__", *API, *CONFIGS]


def __getattr__(name: str):
    if name in API:
        from mixer import api

        return getattr(api, name)
    if name in CONFIGS:
        from mixer.training import config

        return getattr(config, name)
    raise AttributeError(f"module 'mixer' has no attribute {name!r}")
