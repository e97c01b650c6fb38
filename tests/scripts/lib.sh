# Helpers for the container test scripts; source it.
# shellcheck shell=bash
# Needs: $VM, $IMAGES.
I=oci:$IMAGES/oci:busybox
# Every vm command gets a time limit: a hang shows as status 124.
vm() { timeout 120 "$VM" "$@"; }
now() { date +%s.%N; }
# Polls (up to 60 s) until `vm inspect -f FORMAT NAME` prints WANT.
await() {
    for _ in $(seq 1 300); do
        [ "$(vm inspect -f "$2" "$1" 2>/dev/null)" = "$3" ] && return 0
        sleep 0.2
    done
    echo "timed out waiting for $1: $2 = $3 (is $(vm inspect -f "$2" "$1"))"
}
