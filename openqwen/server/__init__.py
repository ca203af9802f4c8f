"""`openqwen serve`: OpenAI- and Anthropic-compatible HTTP server with a web chat page.

Layers, top to bottom:
- app.py (FastAPI app, /health, /metrics, the page) and middleware.py (request ids, logs, keys, limits);
- openai_api.py, openai_completions.py, anthropic_api.py: thin translations of each API's
  bodies (protocol_*.py) onto one internal GenerationRequest (generation.py), via service.py;
- engine_loop.py: the single background thread that drives LLMEngine;
- structured.py: llguidance grammars and the thinking budget as logits processors.
Nothing here is imported by `import openqwen`; FastAPI loads only when the server starts.
"""
