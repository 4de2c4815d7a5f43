#!/usr/bin/env bash
# Starts Triton (model repository $ANTIPHON_TRITON_REPO) and, once Triton and both
# models are ready, `antiphon serve` pointed at it. Either process exiting stops the other.
set -euo pipefail

REPO="${ANTIPHON_TRITON_REPO:-/opt/antiphon/triton-repo}"
GRPC_PORT="${TRITON_GRPC_PORT:-8001}"
HTTP_PORT="${TRITON_HTTP_PORT:-8000}"
READY_TIMEOUT_S="${TRITON_READY_TIMEOUT_S:-300}"

tritonserver --model-repository="$REPO" \
  --grpc-address=127.0.0.1 --grpc-port="$GRPC_PORT" \
  --http-address=127.0.0.1 --http-port="$HTTP_PORT" \
  --allow-metrics=false &
triton_pid=$!
trap 'kill -TERM "$triton_pid" 2>/dev/null || true' EXIT TERM INT

deadline=$((SECONDS + READY_TIMEOUT_S))
for model in "" antiphon_llm antiphon_embed; do
  path="/v2/health/ready"
  [ -n "$model" ] && path="/v2/models/$model/ready"
  until curl -fsS "http://127.0.0.1:$HTTP_PORT$path" >/dev/null; do
    if ! kill -0 "$triton_pid" 2>/dev/null; then echo "tritonserver exited before ready" >&2; exit 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then echo "Triton not ready: $path" >&2; exit 1; fi
    sleep 1
  done
done

export ANTIPHON_MODELS_BACKEND=triton
export ANTIPHON_MODELS_TRITON_URL="127.0.0.1:$GRPC_PORT"
antiphon serve "$@" &
antiphon_pid=$!
trap 'kill -TERM "$antiphon_pid" "$triton_pid" 2>/dev/null || true' EXIT TERM INT
wait -n "$triton_pid" "$antiphon_pid"
