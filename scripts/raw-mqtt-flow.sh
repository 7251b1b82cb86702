#!/usr/bin/env bash
# The raw MQTT provisioning flow of Microsoft's "Communicate with DPS using
# the MQTT protocol" page and the mosquitto how-to blogs, with no SDK, using
# stock mosquitto_rr (Debian mosquitto-clients) against a berth this script
# starts on its own loopback address:
#
#   CONNECT  ClientId=REGID  User='{scope}/registrations/{regId}/api-version=2019-03-31'
#            Password=SAS (berth device sas-token, or computed here with openssl)
#   PUB      $dps/registrations/PUT/iotdps-register/?$rid=1
#   PUB      $dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=…
#
# mosquitto_rr refuses a wildcard response topic, so it cannot subscribe to
# $dps/registrations/res/# as the SDKs do; it subscribes to the exact answer
# it expects instead (-e '$dps/registrations/res/202/?$rid=1&retry-after=3'),
# which berth grants. If the answer is another one (another status, another
# retry-after), mosquitto_rr times out and the check fails. mosquitto_sub
# checks the SDKs' wildcard subscription separately.
#
# Checks the response topics, the JSON bodies, assignedHub and deviceId, and
# that a wrong key gets res/401 with errorCode 401002. Exits non-zero on any
# mismatch. Env: BERTH_BIN (default bin/berth), BERTH_IP (default: a free random
# 127.64.0.0/10 address).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
need mosquitto_sub mosquitto_rr jq openssl base64 timeout

IP=${BERTH_IP:-$(free_ip)}
API=2019-03-31
start_berth "$IP"

# berth serve's default retry-after, which the expected 202 topics carry.
RETRY=3

# dps_rr CLIENT_ID PASSWORD TOPIC RESPONSE_TOPIC [MESSAGE]: one
# request/response with mosquitto_rr on one connection, waiting for exactly
# RESPONSE_TOPIC; sets R_TOPIC and R_BODY. No MESSAGE: a zero-length publish (-n).
dps_rr() {
	local user="$SCOPE/registrations/$1/api-version=$API" out msg=(-n)
	if (($# > 4)); then msg=(-m "$5"); fi
	say "  mosquitto_rr -h $MQTT_HOST -p $MQTT_PORT --cafile CA -V mqttv311 -q 1 -i '$1' -u '$user' -P SAS -t '$3' -e '$4' ${msg[*]}"
	if ! out=$(mosquitto_rr -h "$MQTT_HOST" -p "$MQTT_PORT" --cafile "$CA" -V mqttv311 -q 1 \
		-i "$1" -u "$user" -P "$2" -t "$3" -e "$4" "${msg[@]}" -v -W 15 2>&1); then
		R_TOPIC= R_BODY=
		say "  mosquitto_rr got no answer on $4: $out"
		return 1
	fi
	R_TOPIC=${out%% *}
	R_BODY=${out#* }
	say "  <- $R_TOPIC $R_BODY"
}

# provision LABEL REGID SAS REGISTER_BODY EXPECTED_DEVICE_ID
provision() {
	local label=$1 regid=$2 sas=$3 body=$4 want_dev=$5 opid status rid
	say "== $label: register $regid"
	dps_rr "$regid" "$sas" '$dps/registrations/PUT/iotdps-register/?$rid=1' "\$dps/registrations/res/202/?\$rid=1&retry-after=$RETRY" "$body" || die "$label: no 202 answer to register"
	check "$label: register answered on res/202 with \$rid=1 and retry-after" "$R_TOPIC" "\$dps/registrations/res/202/?\$rid=1&retry-after=$RETRY"
	check "$label: register body status" "$(jqr .status "$R_BODY")" assigning
	opid=$(jqr '.operationId // empty' "$R_BODY")
	check_match "$label: operationId present and topic-safe" "$opid" '^[^&=?#/+ ]+$'
	[[ -n $opid ]] || die "$label: no operationId"
	# berth writes the assignment before it answers the register, so the
	# first poll is final: wait retry-after as a device would, then expect 200.
	sleep "$RETRY"
	rid=2
	dps_rr "$regid" "$sas" "\$dps/registrations/GET/iotdps-get-operationstatus/?\$rid=$rid&operationId=$opid" "\$dps/registrations/res/200/?\$rid=$rid" || die "$label: no 200 answer to poll $rid"
	status=$(jqr .status "$R_BODY")
	check "$label: final answer topic" "$R_TOPIC" "\$dps/registrations/res/200/?\$rid=$rid"
	check "$label: status" "$status" assigned
	check "$label: operationId echoed" "$(jqr .operationId "$R_BODY")" "$opid"
	check "$label: registrationState.registrationId" "$(jqr .registrationState.registrationId "$R_BODY")" "$regid"
	check "$label: registrationState.assignedHub = client.json hubHostName" "$(jqr .registrationState.assignedHub "$R_BODY")" "$HUB"
	check "$label: registrationState.deviceId" "$(jqr .registrationState.deviceId "$R_BODY")" "$want_dev"
	check "$label: registrationState.status" "$(jqr .registrationState.status "$R_BODY")" assigned
	check_match "$label: registrationState.etag" "$(jqr '.registrationState.etag // empty' "$R_BODY")" '.+'
}

# --- individual enrollment, SAS from `berth device sas-token` ---
REGID=raw-mqtt-dev-1
KEY=$(random_key)
say "== berth enrollment create --enrollment-id $REGID --primary-key …"
OUT=$(berth enrollment create --enrollment-id "$REGID" --primary-key "$KEY") || die "berth enrollment create failed: $OUT"
say "  $(jq -c . <<<"$OUT" 2>/dev/null || printf "%s" "$OUT")"
check "enrollment create: registrationId" "$(jqr .registrationId "$OUT")" "$REGID"
check "enrollment create: primary key kept" "$(jqr .attestation.symmetricKey.primaryKey "$OUT")" "$KEY"
SAS=$(berth device sas-token --id-scope "$SCOPE" --registration-id "$REGID" --key "$KEY" | cli_value '.sasToken // .token // .sas') || die "berth device sas-token failed"
check_match "berth device sas-token gives a SAS for $SCOPE/registrations/$REGID" "$SAS" "^SharedAccessSignature .*sr=$SCOPE(/|%2[fF])registrations(/|%2[fF])$REGID(&|$)"
provision individual "$REGID" "$SAS" "{\"registrationId\":\"$REGID\"}" "$REGID"

say "== mosquitto_sub (libmosquitto) connects as $REGID and subscribes to \$dps/registrations/res/#"
MOSQ_LOG=$(mosquitto_sub -d -h "$MQTT_HOST" -p "$MQTT_PORT" --cafile "$CA" -V mqttv311 -q 1 -i "$REGID" \
	-u "$SCOPE/registrations/$REGID/api-version=$API" -P "$SAS" -t '$dps/registrations/res/#' -W 2 2>&1 || true)
say "$(sed 's/^/  /' <<<"$MOSQ_LOG")"
check_match "mosquitto_sub: CONNACK 0" "$(grep -o 'received CONNACK ([0-9]*)' <<<"$MOSQ_LOG" | head -n 1)" 'received CONNACK \(0\)$'
check_match "mosquitto_sub: SUBACK grants QoS 1" "$(grep -o 'Subscribed (mid: [0-9]*): [0-9]*' <<<"$MOSQ_LOG" | head -n 1)" ': 1$'

# --- enrollment group: derived key (berth device derive-key, cross-checked
# with openssl), SAS as Microsoft's Python snippet computes it ---
GROUP=raw-mqtt-group
GKEY=$(random_key)
DEV=raw-mqtt-grp-dev-1
say "== berth enrollment-group create --enrollment-id $GROUP --primary-key …"
OUT=$(berth enrollment-group create --enrollment-id "$GROUP" --primary-key "$GKEY") || die "berth enrollment-group create failed: $OUT"
say "  $(jq -c . <<<"$OUT" 2>/dev/null || printf "%s" "$OUT")"
check "enrollment-group create: enrollmentGroupId" "$(jqr .enrollmentGroupId "$OUT")" "$GROUP"
DKEY=$(berth device derive-key --group-key "$GKEY" --registration-id "$DEV" | cli_value '.derivedKey // .deviceKey // .key // .primaryKey') || die "berth device derive-key failed"
check "berth device derive-key = base64(HMAC-SHA256(group key, registration ID))" "$DKEY" "$(hmac_b64 "$GKEY" "$DEV")"
provision group "$DEV" "$(docs_sas "$SCOPE" "$DEV" "$DKEY")" '{"payload":{"modelId":"dtmi:com:example:Thermostat;1"}}' "$DEV"

# --- wrong key ---
say "== wrong key: register $REGID with a SAS signed by another key"
BAD=$(berth device sas-token --id-scope "$SCOPE" --registration-id "$REGID" --key "$(random_key)" | cli_value '.sasToken // .token // .sas') || die "berth device sas-token failed"
dps_rr "$REGID" "$BAD" '$dps/registrations/PUT/iotdps-register/?$rid=1' '$dps/registrations/res/401/?$rid=1' "{\"registrationId\":\"$REGID\"}" || die "wrong key: no res/401 answer"
check "wrong key: answer topic" "$R_TOPIC" '$dps/registrations/res/401/?$rid=1'
check "wrong key: errorCode" "$(jqr .errorCode "$R_BODY")" 401002
check_match "wrong key: trackingId" "$(jqr '.trackingId // empty' "$R_BODY")" '.+'

say "== wrong key for a group device"
dps_rr "$DEV" "$(docs_sas "$SCOPE" "$DEV" "$(hmac_b64 "$(random_key)" "$DEV")")" '$dps/registrations/PUT/iotdps-register/?$rid=1' '$dps/registrations/res/401/?$rid=1' '{}' || die "group wrong key: no res/401 answer"
check "group wrong key: answer topic" "$R_TOPIC" '$dps/registrations/res/401/?$rid=1'
check "group wrong key: errorCode" "$(jqr .errorCode "$R_BODY")" 401002
