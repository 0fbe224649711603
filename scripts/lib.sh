# Shared by scripts/test and scripts/bench (sourced, not run): logging, Debian installs
# without service starts, and the protoc check etcd-client's build script needs.

log() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [[ $EUID -ne 0 ]]; then SUDO=(sudo); fi

APT_UPDATED=0
# apt_install PKG...: install Debian packages without starting their services.
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
  local policy=/usr/sbin/policy-rc.d created_policy=0 start=$SECONDS
  if [[ ! -e $policy ]]; then
    # Keep postinst scripts from starting services (no init system here).
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod +x "$policy"
    created_policy=1
  fi
  if [[ $APT_UPDATED -eq 0 ]]; then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  # A failing service start in a postinst must not fail the run: whether the
  # binary is there is checked by the caller.
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" \
    || log "apt-get install $* returned non-zero; checking the binaries anyway"
  if [[ $created_policy -eq 1 ]]; then
    "${SUDO[@]}" rm -f "$policy"
  fi
  log "apt-get install $* took $((SECONDS - start)) s"
}

# have_protoc: protoc and the well-known types (google/protobuf/*.proto, Debian's
# libprotobuf-dev) are there, as etcd-client's build script needs them.
have_protoc() {
  local protoc
  protoc=$(command -v "${PROTOC:-protoc}") || return 1
  [[ -n "${PROTOC_INCLUDE:-}" ]] && return 0
  local dir
  for dir in "$(dirname "$protoc")/../include" /usr/include /usr/local/include; do
    [[ -f $dir/google/protobuf/descriptor.proto ]] && return 0
  done
  return 1
}
