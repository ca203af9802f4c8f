import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helper modules (tiny_models, gguf_fixtures)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> str:
    """A random-weight Qwen3 checkpoint (tiny_models), saved once for every test module that only
    reads it."""
    from tiny_models import make_hf_model

    path = tmp_path_factory.mktemp("tiny_qwen3")
    make_hf_model("qwen3", path)
    return str(path)
