#!/usr/bin/env bash
# End-to-end check with a real Anthropic client: Claude Code (npm) talking to `openqwen serve`.
# Slow and outside CI: installs Claude Code (~360 MB) once, loads the model, and sends Claude
# Code's ~12k-token system prompt through a CPU prefill.
#
#   scripts/claude_code_e2e.sh [MODEL] [PROMPT]
#
# Env: PORT (default 8765), CLAUDE_DIR (install dir, default ~/.cache/openqwen/claude-code),
#      CLAUDE_TIMEOUT (seconds for `claude -p`, default 1200), SERVE_FLAGS (extra serve flags).
set -euo pipefail

MODEL="${1:-qwen2.5-coder-0.5b-instruct}"
PROMPT="${2:-Reply with one short sentence: what is 2 + 2?}"
PORT="${PORT:-8765}"
NAME="openqwen-e2e"
CLAUDE_VERSION="2.1.328"
CLAUDE_DIR="${CLAUDE_DIR:-$HOME/.cache/openqwen/claude-code}"
CLAUDE_TIMEOUT="${CLAUDE_TIMEOUT:-1200}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
SERVER_LOG="$WORK/server.log"

cleanup() {
  if [[ -n "${SERVER_PID:-}" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" && wait "$SERVER_PID" || true
  fi
  echo "server log: $SERVER_LOG"
}
trap cleanup EXIT

CLAUDE="$CLAUDE_DIR/node_modules/.bin/claude"
if [[ ! -x "$CLAUDE" ]]; then
  echo "== installing Claude Code $CLAUDE_VERSION into $CLAUDE_DIR"
  mkdir -p "$CLAUDE_DIR"
  npm install --prefix "$CLAUDE_DIR" --no-audit --no-fund "@anthropic-ai/claude-code@$CLAUDE_VERSION"
fi
"$CLAUDE" --version

echo "== starting openqwen serve ($MODEL) on 127.0.0.1:$PORT"
(cd "$REPO" && exec python -m openqwen serve --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
  --served-model-name "$NAME" ${SERVE_FLAGS:-}) >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$SERVER_LOG"; echo "server exited"; exit 1; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/health"; echo

echo "== claude -p \"$PROMPT\""
mkdir -p "$WORK/home"
START=$(date +%s)
set +e
(cd "$WORK" && env HOME="$WORK/home" \
  ANTHROPIC_BASE_URL="http://127.0.0.1:$PORT" ANTHROPIC_AUTH_TOKEN=local ANTHROPIC_MODEL="$NAME" \
  ANTHROPIC_SMALL_FAST_MODEL="$NAME" CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 \
  timeout "$CLAUDE_TIMEOUT" "$CLAUDE" -p "$PROMPT") | tee "$WORK/claude.out"
STATUS=${PIPESTATUS[0]}
set -e
echo "== claude exited with $STATUS after $(( $(date +%s) - START )) s"

echo "== requests the server saw"
python - "$SERVER_LOG" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    if line.startswith("{"):
        entry = json.loads(line)
        if entry.get("msg") == "request":
            print(f'{entry["method"]} {entry["path"]} -> {entry["status"]} in {entry["ms"] / 1000:.1f} s')
PY
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^openqwen_(prompt|generation)_tokens_total|^openqwen_time_to_first_token_seconds_(sum|count)' || true
exit "$STATUS"
