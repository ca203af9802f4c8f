"""openqwen: run the Qwen model family on your own machine."""

from importlib import import_module

from .engine.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "__version__"]

# The rest pulls in torch and the model code: imported on first use so `openqwen --help` stays fast.
_LAZY = {"LLM": ".llm", "RequestOutput": ".engine.llm_engine", "CompletionOutput": ".engine.llm_engine"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'openqwen' has no attribute {name!r}")
