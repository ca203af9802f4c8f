import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # test helper modules (tiny_models, gguf_fixtures)
