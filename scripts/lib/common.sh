# Shared by scripts/raw-*-flow.sh (sourced, not run). Starts a berth of its
# own on a loopback address, wraps the berth CLI, and counts checks.
# Needs: bash, jq, openssl, base64, od.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BERTH_BIN=${BERTH_BIN:-$REPO/bin/berth}
case $BERTH_BIN in /*) ;; *) BERTH_BIN=$PWD/$BERTH_BIN ;; esac

PASSED=0
FAILED=0
SCRIPT_NAME=$(basename "$0" .sh)
BERTH_PID=
DATA=
MON_PID=

say() { printf '%s\n' "$*"; }

# check DESCRIPTION ACTUAL EXPECTED
check() {
	if [[ "$2" == "$3" ]]; then
		PASSED=$((PASSED + 1))
		say "ok   - $1: $2"
	else
		FAILED=$((FAILED + 1))
		say "FAIL - $1: got '$2', want '$3'"
	fi
}

# check_match DESCRIPTION ACTUAL EXTENDED-REGEX
check_match() {
	if [[ "$2" =~ $3 ]]; then
		PASSED=$((PASSED + 1))
		say "ok   - $1: $2"
	else
		FAILED=$((FAILED + 1))
		say "FAIL - $1: got '$2', want a match of /$3/"
	fi
}

die() {
	FAILED=$((FAILED + 1))
	say "FAIL - $*"
	exit 1
}

need() {
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || { say "FAIL - $SCRIPT_NAME needs '$c' on PATH (.ci/run installs it)"; exit 2; }
	done
}

finish() {
	local rc=$?
	if [[ -n $MON_PID ]] && kill -0 "$MON_PID" 2>/dev/null; then
		kill -TERM "$MON_PID" 2>/dev/null || true
		wait "$MON_PID" 2>/dev/null || true
	fi
	if [[ -n $BERTH_PID ]] && kill -0 "$BERTH_PID" 2>/dev/null; then
		kill -TERM "$BERTH_PID" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$BERTH_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$BERTH_PID" 2>/dev/null || true
		wait "$BERTH_PID" 2>/dev/null || true
	fi
	if ((FAILED > 0 || rc != 0)) && [[ -n $DATA && -f $DATA/berth.log ]]; then
		say "--- berth log ($DATA/berth.log) ---"
		tail -n 60 "$DATA/berth.log"
		say "---"
	fi
	if [[ -n $DATA && -z ${BERTH_KEEP_DATA:-} ]]; then rm -rf "$DATA"; fi
	say "$SCRIPT_NAME: $PASSED passed, $FAILED failed"
	if ((rc == 0 && FAILED > 0)); then rc=1; fi
	exit "$rc"
}
trap finish EXIT

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# free_ip: a random loopback address in 127.64.0.0/10 with nothing on 443
# or 8883, so concurrent runs on one machine never share an address.
free_ip() {
	local ip i
	for i in $(seq 20); do
		ip=127.$((64 + RANDOM % 64)).$((1 + RANDOM % 254)).$((1 + RANDOM % 254))
		if ! port_open "$ip" 443 && ! port_open "$ip" 8883; then
			printf '%s\n' "$ip"
			return 0
		fi
	done
	die "found no free loopback address in 20 tries"
}

# start_berth IP: berth serve on IP:8883 and IP:443 with a fresh data dir;
# sets DATA, SCOPE, HOST (DPS global endpoint), HUB, CA, MQTT_HOST/PORT, HTTPS_HOST/PORT.
start_berth() {
	local ip=$1
	[[ $ip =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "not a loopback address: '$ip'"
	[[ -x $BERTH_BIN ]] || die "berth binary not found at $BERTH_BIN (make build, or set BERTH_BIN)"
	for p in 443 8883; do
		port_open "$ip" "$p" && die "$ip:$p is already taken (a berth left running?)"
	done
	DATA=$(mktemp -d "${TMPDIR:-/tmp}/berth-$SCRIPT_NAME.XXXXXX")
	"$BERTH_BIN" serve --data-dir "$DATA" --host "$ip" --mqtt-addr "$ip:8883" --https-addr "$ip:443" --amqp-addr "$ip:5671" \
		>"$DATA/berth.log" 2>&1 &
	BERTH_PID=$!
	local i
	for i in $(seq 300); do
		kill -0 "$BERTH_PID" 2>/dev/null || die "berth exited before it was ready"
		if [[ -s $DATA/client.json ]] && port_open "$ip" 443 && port_open "$ip" 8883; then break; fi
		sleep 0.1
	done
	[[ -s $DATA/client.json ]] || die "berth wrote no $DATA/client.json in 30 s"
	SCOPE=$(jq -r .idScope "$DATA/client.json")
	HOST=$(jq -r .globalEndpoint "$DATA/client.json")
	HUB=$(jq -r .hubHostName "$DATA/client.json")
	CA=$(jq -r .caFile "$DATA/client.json")
	[[ $CA == /* ]] || CA=$DATA/$CA
	local mqtt https
	mqtt=$(jq -r .mqttAddress "$DATA/client.json")
	https=$(jq -r .httpsAddress "$DATA/client.json")
	MQTT_HOST=${mqtt%:*} MQTT_PORT=${mqtt##*:}
	HTTPS_HOST=${https%:*} HTTPS_PORT=${https##*:}
	say "berth pid $BERTH_PID: scope $SCOPE, DPS endpoint $HOST, hub $HUB, MQTT $mqtt, HTTPS $https, CA $CA"
	[[ -s $CA ]] || die "CA file $CA missing"
}

# berth ARGS...: the berth CLI against the berth started above.
berth() { "$BERTH_BIN" "$@" --data-dir "$DATA"; }

# cli_value JQ-FILTER: reads a berth CLI answer on stdin; a bare (non-JSON)
# line or a JSON string is the value itself, an object goes through the filter.
cli_value() {
	local in
	in=$(cat)
	if jq -e . >/dev/null 2>&1 <<<"$in"; then
		if [[ $(jq -r type <<<"$in") == string ]]; then
			jq -r . <<<"$in"
		else
			jq -r "$1" <<<"$in"
		fi
	else
		printf '%s\n' "$in" | tail -n 1
	fi
}

# b64key_hex KEY: the bytes of a base64 key, as hex for openssl's hexkey.
b64key_hex() { printf '%s' "$1" | base64 -d | od -An -v -tx1 | tr -d ' \n'; }

# hmac_b64 BASE64-KEY MESSAGE: base64(HMAC-SHA256(base64decode(key), message))
hmac_b64() {
	printf '%s' "$2" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$(b64key_hex "$1")" -binary | base64 -w0
}

# docs_sas SCOPE REGID KEY [TTL]: the DPS SAS token exactly as Microsoft's
# Python snippet builds it (quote_plus of the resource, skn=registration).
docs_sas() {
	local sr="$1%2Fregistrations%2F$2" se sig
	se=$(($(date +%s) + ${4:-3600}))
	sig=$(hmac_b64 "$3" "$sr"$'\n'"$se")
	sig=${sig//+/%2B}
	sig=${sig//\//%2F}
	sig=${sig//=/%3D}
	printf 'SharedAccessSignature sr=%s&sig=%s&se=%s&skn=registration' "$sr" "$sig" "$se"
}

# jqr FILTER JSON: jq -r that never fails (a non-JSON input reads as <not JSON: …>).
jqr() { jq -r "$1" <<<"$2" 2>/dev/null || printf '<not JSON: %s>\n' "$2"; }

random_key() { openssl rand -base64 64 | tr -d '\n'; }

# urlenc STRING: percent-encoding of everything but A-Z a-z 0-9 - _ . ~
# (what Python's quote_plus does to a host/devices/id resource URI).
urlenc() { jq -rn --arg s "$1" '$s|@uri'; }

# hub_sas HUB DEVICE KEY [TTL]: an IoT Hub device SAS token as the Python
# snippet of Microsoft's "Control access to IoT Hub with shared access
# signatures" page builds it: sr = quote_plus("{hub}/devices/{device}"),
# sig = base64(HMAC-SHA256(key, sr + "\n" + se)), url-encoded; no skn.
hub_sas() {
	local sr se sig
	sr=$(urlenc "$1/devices/$2")
	se=$(($(date +%s) + ${4:-3600}))
	sig=$(hmac_b64 "$3" "$sr"$'\n'"$se")
	printf 'SharedAccessSignature sr=%s&sig=%s&se=%s' "$sr" "$(urlenc "$sig")" "$se"
}

# monitor_start OUT ARGS...: `berth hub monitor-events --from-start ARGS` in
# the background, stdout to OUT, stderr to OUT.err; monitor_wait waits for it
# and sets MON_RC. Started before the device sends, it sees the message live;
# --from-start makes it find the message even if it subscribed too late.
monitor_start() {
	local out=$1
	shift
	say "  berth hub monitor-events --from-start $* &"
	berth hub monitor-events --from-start "$@" >"$out" 2>"$out.err" &
	MON_PID=$!
}
monitor_wait() {
	MON_RC=0
	wait "$MON_PID" || MON_RC=$?
	MON_PID=
}

# Reading `berth hub monitor-events` lines, which have az iot hub
# monitor-events' shape: {"event":{"origin","payload","properties":{"system":
# {message_id, correlation_id, content_type, content_encoding, …},
# "application":{…}},"annotations":{"iothub-connection-device-id", …}}}.

# ev_payload EVENT-JSON: the payload as text (a JSON payload the CLI decoded
# into an object is printed compact again).
ev_payload() { jq -rc '.event.payload | if type == "string" then . else tojson end' <<<"$1" 2>/dev/null || printf '<not JSON: %s>\n' "$1"; }

# ev_sys / ev_app / ev_anno EVENT-JSON NAME: a system property (az's AMQP
# name), an application property, an annotation (the hub's stamps).
ev_sys() { jq -r --arg k "$2" '.event.properties.system[$k] // empty' <<<"$1" 2>/dev/null || true; }
ev_app() { jq -r --arg k "$2" '.event.properties.application[$k] // empty' <<<"$1" 2>/dev/null || true; }
ev_anno() { jq -r --arg k "$2" '.event.annotations[$k] // empty' <<<"$1" 2>/dev/null || true; }

# events_of FILE: the monitor-events lines in FILE that are events.
events_of() { jq -c 'select(type == "object" and has("event"))' "$1" 2>/dev/null || true; }

# monitor_ready OUT: waits (up to 5 s) until the monitor of monitor_start
# says on stderr that it started.
monitor_ready() {
	local i
	for i in $(seq 50); do
		[[ -s $1.err ]] && return 0
		kill -0 "$MON_PID" 2>/dev/null || return 0
		sleep 0.1
	done
}
