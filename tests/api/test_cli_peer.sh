#!/usr/bin/env bash
# test_cli_peer.sh: `ntcp listen` and `ntcp connect` through an ntcp-brokerd
# on 127.0.0.1: stdin and stdout both ways, the --json status line, the exit
# codes (0 ok, 1 usage, 2 unreachable broker, 3 unknown peer, 4 refused) and
# the help. Keys go to a temporary XDG_CONFIG_HOME. Every process started
# here is stopped by its PID.
# usage: test_cli_peer.sh PATH-TO-ntcp PATH-TO-ntcp-brokerd
set -u
ntcp=${1:?ntcp}
brokerd=${2:?ntcp-brokerd}
for p in "$ntcp" "$brokerd"; do
    [ -x "$p" ] || { echo "SKIP: $p not built"; exit 77; }
done
command -v python3 >/dev/null || { echo "SKIP: no python3"; exit 77; }

tmp=$(mktemp -d /tmp/ntcp-cli-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    if [ -n "${NTCP_TEST_KEEP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

export HOME=$tmp/home XDG_CONFIG_HOME=$tmp/xdg
mkdir -p "$HOME" "$XDG_CONFIG_HOME"
: >"$tmp/empty.conf"
export NTCP_CONFIG=$tmp/empty.conf # nothing from the machine's own configuration

fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION WANT GOT
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: want $2, got $3"; fi
}

# Waits (polling, with a deadline) until FILE contains TEXT.
wait_for_text() { # FILE TEXT SECONDS
    local end=$((SECONDS + $3))
    while [ $SECONDS -lt $end ]; do
        grep -qF -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

free_port() {
    python3 - <<'EOF'
import socket
for _ in range(50):
    t = socket.socket(); t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port)); print(port); break
    except OSError:
        pass
    finally:
        u.close(); t.close()
EOF
}

# ---- the broker ----
bpid=
for _ in 1 2 3 4 5; do
    port=$(free_port)
    : >"$tmp/brokerd.log"
    "$brokerd" --listen "127.0.0.1:$port" --udp "127.0.0.1:$port" --state-dir "$tmp/state" \
        --stats 0 2>"$tmp/brokerd.log" &
    bpid=$!
    if wait_for_text "$tmp/brokerd.log" "listening on 127.0.0.1:$port (TCP)" 20; then
        pids+=("$bpid")
        break
    fi
    kill "$bpid" 2>/dev/null; wait "$bpid" 2>/dev/null; bpid=
done
[ -n "$bpid" ] || { echo "FAIL: ntcp-brokerd did not start"; cat "$tmp/brokerd.log"; exit 1; }
broker=127.0.0.1:$port
T=30000

# ---- help and usage ----
"$ntcp" listen --help >"$tmp/h1" 2>&1; check "ntcp listen --help exits 0" 0 $?
grep -q "usage: ntcp listen" "$tmp/h1" && ok "listen help text" || bad "listen help text"
"$ntcp" help connect >"$tmp/h2" 2>&1; check "ntcp help connect exits 0" 0 $?
grep -q "usage: ntcp connect" "$tmp/h2" && ok "connect help text" || bad "connect help text"
"$ntcp" connect --help >/dev/null 2>&1; check "ntcp connect --help exits 0" 0 $?
"$ntcp" help listen >/dev/null 2>&1; check "ntcp help listen exits 0" 0 $?

"$ntcp" connect -b "$broker" bob </dev/null >/dev/null 2>"$tmp/e"; check "connect without --id: 1" 1 $?
"$ntcp" listen -b "$broker" </dev/null >/dev/null 2>&1; check "listen without --id: 1" 1 $?
"$ntcp" connect --id alice bob </dev/null >/dev/null 2>&1; check "connect without a broker: 1" 1 $?
"$ntcp" connect --id alice -b "$broker" -t abc bob </dev/null >/dev/null 2>&1
check "bad --timeout abc: 1" 1 $?
"$ntcp" connect --id alice -b "$broker" -t 0 bob </dev/null >/dev/null 2>&1
check "bad --timeout 0: 1" 1 $?
"$ntcp" connect --id alice -b "$broker" </dev/null >/dev/null 2>&1; check "connect without PEER: 1" 1 $?
"$ntcp" listen --id bob -b "$broker" extra </dev/null >/dev/null 2>&1; check "listen with an argument: 1" 1 $?
"$ntcp" connect --id alice -b "$broker" --allow x bob </dev/null >/dev/null 2>&1
check "connect --allow: 1" 1 $?
"$ntcp" connect --id alice -b "$broker" --bogus bob </dev/null >/dev/null 2>&1; check "unknown option: 1" 1 $?
"$ntcp" connect --id 'bad name' -b "$broker" bob </dev/null >/dev/null 2>&1; check "invalid --id: 1" 1 $?

# ---- one connection, data both ways ----
head -c 200000 /dev/urandom >"$tmp/to_alice"
head -c 150000 /dev/urandom >"$tmp/to_bob"
"$ntcp" listen --id bob -b "$broker" -t $T --json <"$tmp/to_alice" >"$tmp/bob.out" 2>"$tmp/bob.err" &
lpid=$!
pids+=("$lpid")
# With --json the listener says {"listening":"bob"} once registered.
wait_for_text "$tmp/bob.err" '{"listening":"bob"}' 30 && ok "listen --json says it listens" ||
    bad "no listening line: $(cat "$tmp/bob.err")"
"$ntcp" connect --id alice -b "$broker" -t $T --json bob <"$tmp/to_bob" >"$tmp/alice.out" 2>"$tmp/alice.err"
crc=$?
check "connect exits 0" 0 $crc
wait "$lpid"; lrc=$?
check "listen exits 0" 0 $lrc
cmp -s "$tmp/to_bob" "$tmp/bob.out" && ok "alice's stdin is bob's stdout" || bad "alice -> bob data differs"
cmp -s "$tmp/to_alice" "$tmp/alice.out" && ok "bob's stdin is alice's stdout" || bad "bob -> alice data differs"
for side in alice bob; do
    if [ "$side" = alice ]; then peer=bob role=initiator; else peer=alice role=target; fi
    if python3 - "$tmp/$side.err" "$peer" "$role" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
if sys.argv[3] == "target":
    assert json.loads(lines[0]) == {"listening": "bob"}, lines
    lines = lines[1:]
assert len(lines) == 1, lines
j = json.loads(lines[0])
won = [a for a in j["attempt_list"] if a["outcome"] == "won"]
assert len(won) == 1 and won[0]["method"] == j["method"], j
assert len(j["attempt_list"]) == j["attempts"], j
assert j["ok"] is True, j
assert j["peer"] == sys.argv[2], j
assert j["role"] == sys.argv[3], j
assert j["transport"] == "tcp", j
assert j["method"], j
assert j["verified_ms"] >= j["connected_ms"] >= 0, j
assert j["local"] and j["remote"], j
EOF
    then ok "$side --json status line"; else bad "$side --json status line"; cat "$tmp/$side.err"; fi
done
for k in alice bob; do
    m=$(stat -c %a "$XDG_CONFIG_HOME/ntcp/$k.key" 2>/dev/null)
    check "$k's key made in XDG_CONFIG_HOME, mode 600" 600 "$m"
done

# ---- one way: the listener sends a file, the connector has nothing to say ----
# (its stdin ends at once: that must not cut the file short)
"$ntcp" listen --id bob -b "$broker" -t $T <"$tmp/to_alice" >"$tmp/bob3.out" 2>"$tmp/bob3.err" &
lpid=$!
pids+=("$lpid")
if wait_for_text "$tmp/bob3.err" "listening as bob" 30; then
    "$ntcp" connect --id alice -b "$broker" -t $T -q bob </dev/null >"$tmp/alice3.out" 2>"$tmp/alice3.err"
    check "one-way connect exits 0" 0 $?
    wait "$lpid"; check "one-way listen exits 0" 0 $?
    cmp -s "$tmp/to_alice" "$tmp/alice3.out" && ok "the whole file arrived" \
        || bad "file cut short: $(stat -c %s "$tmp/alice3.out") of 200000 bytes"
    [ ! -s "$tmp/bob3.out" ] && ok "nothing came back" || bad "the listener got data"
else
    bad "listener did not come up: $(cat "$tmp/bob3.err")"
fi

# ---- unknown peer: 3 ----
"$ntcp" connect --id alice -b "$broker" -t $T --json nobody </dev/null >/dev/null 2>"$tmp/e"
check "unknown peer: 3" 3 $?
python3 -c 'import json,sys; j=json.loads(open(sys.argv[1]).readline()); assert j["ok"] is False and j["peer"]=="nobody" and j["error"]' "$tmp/e" \
    && ok "unknown peer --json line" || bad "unknown peer --json line: $(cat "$tmp/e")"

# ---- refused by the listener's --allow: 4 ----
"$ntcp" listen --id bob -b "$broker" -t $T --allow carol </dev/null >"$tmp/bob2.out" 2>"$tmp/bob2.err" &
lpid=$!
pids+=("$lpid")
if wait_for_text "$tmp/bob2.err" "listening as bob" 30; then
    "$ntcp" connect --id alice -b "$broker" -t $T bob </dev/null >"$tmp/a2.out" 2>"$tmp/a2.err"
    check "refused by --allow: 4" 4 $?
    [ ! -s "$tmp/bob2.out" ] && ok "refused: nothing reached the listener" || bad "refused listener got data"
    # carol is allowed; her name and broker come from a configuration file.
    printf '[ntcp]\nbroker = %s\nname = carol\n' "$broker" >"$tmp/carol.conf"
    echo "hello from carol" | "$ntcp" connect -c "$tmp/carol.conf" -t $T -q bob >/dev/null 2>"$tmp/c.err"
    check "allowed carol (from -c FILE): 0" 0 $?
    wait "$lpid"; check "listener exits 0 after carol" 0 $?
    grep -qx "hello from carol" "$tmp/bob2.out" && ok "carol's line arrived" || bad "carol's line missing"
else
    bad "listener with --allow did not come up: $(cat "$tmp/bob2.err")"
fi

# ---- a name bound to another key: 4 ----
"$ntcp" listen --id bob -k "$tmp/other.key" -b "$broker" -t $T </dev/null >/dev/null 2>"$tmp/e"
check "bob with another key: 4" 4 $?

# ---- no broker there: 2 ----
dead=127.0.0.1:$(free_port)
"$ntcp" connect --id alice -b "$dead" -t 1500 bob </dev/null >/dev/null 2>"$tmp/e"
check "unreachable broker (connect): 2" 2 $?
"$ntcp" listen --id bob -b "$dead" -t 1500 </dev/null >/dev/null 2>"$tmp/e"
check "unreachable broker (listen): 2" 2 $?

echo "$fails failed"
[ $fails -eq 0 ]
