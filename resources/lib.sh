# Shared helpers for the project's shell scripts. Source it; do not run it.
# shellcheck shell=bash

# Where built artefacts (guest kernel, nested host files) are cached.
vm_cache_dir() {
    echo "${VM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vm}"
}

# The checkout this file belongs to.
vm_repo_root() {
    (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

# Print a progress/status line on stderr.
vm_say() {
    printf '%s\n' "$*" >&2
}

vm_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# The absolute path of the Firecracker binary a benchmark's
# --firecracker names (it must be executable).
vm_firecracker_arg() {
    [ -x "${1:-}" ] || vm_die "--firecracker needs the path of a Firecracker binary (built outside this checkout, see bench/ in README.md)"
    realpath "$1"
}

# Install Debian packages that are missing. Each argument is "package" or
# "package:command" (the command that proves the package is there).
vm_need_packages() {
    local missing=() spec pkg cmd
    for spec in "$@"; do
        pkg=${spec%%:*}
        cmd=${spec#*:}
        if [ "$cmd" != "$spec" ]; then
            command -v "$cmd" >/dev/null 2>&1 && continue
        else
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' && continue
        fi
        missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        vm_die "missing Debian packages: ${missing[*]} (install them: sudo apt-get install ${missing[*]})"
    fi
    vm_say "installing Debian packages: ${missing[*]}"
    local stamp=/var/lib/apt/periodic/vm-update-stamp
    if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
        apt-get update -q >/dev/null || vm_die "apt-get update failed"
        mkdir -p "$(dirname "$stamp")" && touch "$stamp"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || vm_die "apt-get install ${missing[*]} failed"
}
