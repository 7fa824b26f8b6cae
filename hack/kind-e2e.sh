#!/usr/bin/env bash
# End to end on a real (kind) cluster: build the image, install the chart, run samples/hello.yaml
# in a microVM and print its result. Needs Docker, kind, helm and kubectl on a host with KVM
# (kind's node containers are privileged, so they see the host's /dev/kvm).
#
#   bash hack/kind-e2e.sh
#
# The image comes from hack/build-image.sh with Docker (Cloud Hypervisor v53.0, pinned by sha256
# in the Dockerfile). Not run by CI: the CI machines have neither Docker nor a usable KVM.
#
# KEEP_CLUSTER=1 leaves the cluster up for a look around (delete it with `kind delete cluster
# --name vmsandbox-e2e`).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${CLUSTER:-vmsandbox-e2e}"
IMAGE="vmsandbox:e2e"
NAMESPACE="vmsandbox-system"

for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is required" >&2; exit 1; }
done
[ -c /dev/kvm ] || { echo "kind-e2e: this host has no /dev/kvm; microVMs need KVM" >&2; exit 1; }

cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    kubectl get vmsb -A -o wide || true
    kubectl -n "$NAMESPACE" get pods -o wide || true
    kubectl -n "$NAMESPACE" logs -l app.kubernetes.io/component=operator --tail=50 || true
    kubectl -n "$NAMESPACE" logs -l app.kubernetes.io/component=agent --tail=50 || true
  fi
  [ "${KEEP_CLUSTER:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"
  exit "$status"
}

echo "== cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --wait 120s
trap cleanup EXIT
kubectl config use-context "kind-$CLUSTER"

echo "== image"
VMSANDBOX_IMAGE_ENGINE=docker bash hack/build-image.sh --tag "$IMAGE"
kind load docker-image "$IMAGE" --name "$CLUSTER"

echo "== chart"
for node in $(kubectl get nodes -o name); do
  kubectl label "$node" vmsandbox.io/kvm=true --overwrite
done
helm install vmsandbox charts/vmsandbox --namespace "$NAMESPACE" --create-namespace \
  --set image.repository=vmsandbox --set image.tag=e2e --set image.pullPolicy=Never \
  --set operator.replicas=1 --wait --timeout 5m
kubectl wait --for=jsonpath='{.metadata.labels.vmsandbox\.io/agent}'=ready node --all --timeout=120s

echo "== samples/hello.yaml"
kubectl apply -f samples/hello.yaml
kubectl wait vmsb/hello --for=jsonpath='{.status.phase}'=Succeeded --timeout=300s
kubectl get vmsb hello -o wide
kubectl get vmsb hello -o jsonpath='{.status.container.exitCode}{"\n"}{.status.bootTimings}{"\n"}'
node="$(kubectl get vmsb hello -o jsonpath='{.status.nodeName}')"
endpoint="$(kubectl get node "$node" -o jsonpath='{.metadata.annotations.vmsandbox\.io/agent-endpoint}')"
# The agent's HTTP server is on the pod network; ask it from inside the cluster.
kubectl run logs-of-hello --rm -i --restart=Never --image=curlimages/curl --quiet -- \
  curl -fsS "$endpoint/logs/default/hello"

kubectl delete -f samples/hello.yaml --wait --timeout=120s
echo "== ok"
