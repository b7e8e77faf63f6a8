#!/usr/bin/env bash
# The main flow end to end: train and package a model, test the package, serve it, query it with curl
# (V2 and V1), stop it, and write its container build context.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=demo-output
mkdir -p "$OUT"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; }

step "1. Train a scikit-learn model and package it: shipyard.package(model, DIR, sample_input=...)"
$BIN/python scripts/train_iris.py "$OUT"
show "cat $OUT/iris/shipyard.yaml"
cat "$OUT/iris/shipyard.yaml"

step "2. Test the package: its examples in-process, then over REST and gRPC against a real server"
show "shipyard test $OUT/iris"
$BIN/shipyard test "$OUT/iris"

step "3. Serve it: shipyard serve $OUT/iris"
$BIN/shipyard serve "$OUT/iris" --http-port 0 --grpc-port 0 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 200); do
  URL=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$OUT/server.log" | head -n1)
  if [ -n "$URL" ] && curl -sf "$URL/v2/health/ready" >/dev/null; then break; fi
  if ! kill -0 $SERVER 2>/dev/null; then cat "$OUT/server.log"; echo "server exited" >&2; exit 1; fi
  sleep 0.1
done
curl -sf "$URL/v2/health/ready" >/dev/null || { cat "$OUT/server.log"; echo "server did not become ready" >&2; exit 1; }
cat "$OUT/server.log"

step "4. Model metadata (V2)"
show "curl $URL/v2/models/iris"
curl -s "$URL/v2/models/iris"; echo

step "5. Predict with the Open Inference Protocol (V2)"
BODY='{"inputs":[{"name":"input-0","shape":[2,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}]}'
show "curl -X POST $URL/v2/models/iris/infer -d '$BODY'"
curl -s -X POST "$URL/v2/models/iris/infer" -H 'content-type: application/json' -d "$BODY"; echo

step "6. Class probabilities: ask for the predict_proba output"
BODY='{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}],"outputs":[{"name":"predict_proba"}]}'
show "curl -X POST $URL/v2/models/iris/infer -d '$BODY'"
curl -s -X POST "$URL/v2/models/iris/infer" -d "$BODY"; echo

step "7. Predict with KServe V1"
BODY='{"instances":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}'
show "curl -X POST $URL/v1/models/iris:predict -d '$BODY'"
curl -s -X POST "$URL/v1/models/iris:predict" -d "$BODY"; echo

step "8. Bad input gets a clear error (and the server keeps serving)"
BODY='{"inputs":[{"name":"input-0","shape":[1,3],"datatype":"FP32","data":[5.1,3.5,1.4]}]}'
show "curl -X POST $URL/v2/models/iris/infer -d '$BODY'"
curl -s -w '  (HTTP %{http_code})' -X POST "$URL/v2/models/iris/infer" -d "$BODY"; echo

step "9. The same from the CLI: shipyard predict"
show "shipyard predict iris --url $URL -d '[[5.9, 3.0, 5.1, 1.8]]'"
$BIN/shipyard predict iris --url "$URL" -d '[[5.9, 3.0, 5.1, 1.8]]'

step "10. Stop the server (SIGTERM drains in-flight requests)"
kill -TERM $SERVER
wait $SERVER
trap - EXIT
tail -n 2 "$OUT/server.log"

step "11. Ship it: a container build context and KServe manifests"
show "shipyard build $OUT/iris --out $OUT/iris-image --force"
$BIN/shipyard build "$OUT/iris" --out "$OUT/iris-image" --force
ls "$OUT/iris-image" "$OUT/iris-image/kubernetes"
printf '\n\033[1mDone.\033[0m Package your own model: shipyard.package(model, "my-model", sample_input=X[:5]), '
printf 'then shipyard test my-model and shipyard serve my-model\n'
