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
# that a wrong key gets res/401 with errorCode 401002.
#
# Then the provisioned devices send telemetry to the hub DPS assigned, with
# stock mosquitto_pub as in Microsoft's "Communicate with an IoT hub using the
# MQTT protocol" page:
#
#   CONNECT  ClientId=DEVICE  User='{hub}/{device}/?api-version=2021-04-12'
#            Password=hub SAS, sr={hub}/devices/{device} (berth hub sas-token, or openssl)
#   PUB q1   devices/{device}/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&unit=celsius
#
# and `berth hub monitor-events --from-start --device-id … --properties all`
# (started before the publish) must print the message with its properties. A
# publish on another device's topic must lose the connection (no PUBACK), a
# wrong key must get CONNACK 5, and neither may reach the stream. Exits
# non-zero on any mismatch. Env: BERTH_BIN (default bin/berth), BERTH_IP (default: a free random
# 127.64.0.0/10 address).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
need mosquitto_sub mosquitto_rr mosquitto_pub jq openssl base64 od timeout

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

# --- IoT hub: device telemetry over MQTT with mosquitto_pub ---
# The devices provisioned above connect to the hub DPS assigned ($HUB) on the
# same listener: ClientId = deviceId, User = '{hub}/{deviceId}/?api-version=2021-04-12',
# Password = a hub SAS token (sr = {hub}/devices/{deviceId}) signed with the DPS key.
HUB_API=2021-04-12
MON=$DATA/monitor
TOPIC_BAG='%24.ct=application%2Fjson&%24.ce=utf-8&unit=celsius'

# hub_pub DEVICE PASSWORD TOPIC MESSAGE: one QoS 1 publish with stock
# mosquitto_pub -d; sets P_RC and P_LOG.
hub_pub() {
	local user="$HUB/$1/?api-version=$HUB_API"
	say "  mosquitto_pub -h $MQTT_HOST -p $MQTT_PORT --cafile CA -V mqttv311 -q 1 -i '$1' -u '$user' -P SAS -t '$3' -m '$4'"
	P_RC=0
	P_LOG=$(timeout 20 mosquitto_pub -d -h "$MQTT_HOST" -p "$MQTT_PORT" --cafile "$CA" -V mqttv311 -q 1 \
		-i "$1" -u "$user" -P "$2" -t "$3" -m "$4" 2>&1) || P_RC=$?
	say "$(sed 's/^/  | /' <<<"$P_LOG")"
	say "  exit status $P_RC"
}

say "== hub telemetry: $REGID publishes with the SAS of berth hub sas-token"
HUB_SAS=$(berth hub sas-token --device-id "$REGID" --key "$KEY" | cli_value '.sas // .sasToken // .token') || die "berth hub sas-token failed"
check_match "berth hub sas-token: a SAS for $HUB/devices/$REGID" "$HUB_SAS" "^SharedAccessSignature .*sr=$HUB(/|%2[fF])devices(/|%2[fF])$REGID(&|$)"
monitor_start "$MON.1" --device-id "$REGID" --properties all --count 1 --timeout 20s
monitor_ready "$MON.1"
hub_pub "$REGID" "$HUB_SAS" "devices/$REGID/messages/events/$TOPIC_BAG" '{"t":21}'
check "mosquitto_pub: exit status" "$P_RC" 0
check_match "mosquitto_pub: CONNACK 0" "$(grep -o 'received CONNACK ([0-9]*)' <<<"$P_LOG" | head -n 1)" 'received CONNACK \(0\)$'
check_match "mosquitto_pub: PUBACK" "$(grep -o 'received PUBACK' <<<"$P_LOG" | head -n 1)" 'received PUBACK'
monitor_wait
check "monitor-events --count 1: exit status" "$MON_RC" 0
EV=$(events_of "$MON.1")
say "  monitor: $EV"
check "monitor: one event" "$(grep -c . <<<"$EV" || true)" 1
check "monitor: payload" "$(ev_payload "$EV")" '{"t":21}'
check "monitor: system content_type" "$(ev_sys "$EV" content_type)" application/json
check "monitor: system content_encoding" "$(ev_sys "$EV" content_encoding)" utf-8
check "monitor: annotation iothub-connection-device-id" "$(ev_anno "$EV" iothub-connection-device-id)" "$REGID"
check_match "monitor: annotation iothub-enqueuedtime (Unix ms)" "$(ev_anno "$EV" iothub-enqueuedtime)" '^1[0-9]{12}$'
check "monitor: annotation iothub-message-source" "$(ev_anno "$EV" iothub-message-source)" Telemetry
check "monitor: application unit" "$(ev_app "$EV" unit)" celsius
check "monitor: origin" "$(jqr '.event.origin' "$EV")" "$REGID"

say "== hub telemetry: group device $DEV publishes with a SAS computed with openssl as Microsoft's docs do"
DEV_SAS=$(hub_sas "$HUB" "$DEV" "$DKEY")
monitor_start "$MON.2" --device-id "$DEV" --properties all --count 1 --timeout 20s
monitor_ready "$MON.2"
hub_pub "$DEV" "$DEV_SAS" "devices/$DEV/messages/events/%24.mid=m-2&%24.cid=c-2&$TOPIC_BAG&alert=false" '{"t":22.5}'
check "mosquitto_pub: exit status" "$P_RC" 0
monitor_wait
check "monitor-events --count 1: exit status" "$MON_RC" 0
EV=$(events_of "$MON.2")
say "  monitor: $EV"
check "monitor: payload" "$(ev_payload "$EV")" '{"t":22.5}'
check "monitor: system message_id" "$(ev_sys "$EV" message_id)" m-2
check "monitor: system correlation_id" "$(ev_sys "$EV" correlation_id)" c-2
check "monitor: system content_type" "$(ev_sys "$EV" content_type)" application/json
check "monitor: annotation iothub-connection-device-id" "$(ev_anno "$EV" iothub-connection-device-id)" "$DEV"
check "monitor: application unit" "$(ev_app "$EV" unit)" celsius
check "monitor: application alert" "$(ev_app "$EV" alert)" false

say "== hub telemetry refused: $REGID publishes on $DEV's topic, then connects with a wrong key"
hub_pub "$REGID" "$HUB_SAS" "devices/$DEV/messages/events/$TOPIC_BAG" '{"t":-1}'
check_match "another device's topic: mosquitto_pub fails" "$P_RC" '^[1-9][0-9]*$'
check "another device's topic: no PUBACK" "$(grep -c 'received PUBACK' <<<"$P_LOG" || true)" 0
check "another device's topic: berth closes the connection" "$(grep -o 'The connection was lost' <<<"$P_LOG" | head -n 1)" 'The connection was lost'
hub_pub "$REGID" "$(hub_sas "$HUB" "$REGID" "$(random_key)")" "devices/$REGID/messages/events/$TOPIC_BAG" '{"t":-2}'
check_match "wrong key: mosquitto_pub fails" "$P_RC" '^[1-9][0-9]*$'
check_match "wrong key: CONNACK 5" "$(grep -o 'received CONNACK ([0-9]*)' <<<"$P_LOG" | head -n 1)" 'received CONNACK \(5\)$'
check "wrong key: mosquitto's message" "$(grep -o 'Connection Refused: not authori[sz]ed\.' <<<"$P_LOG" | head -n 1)" 'Connection Refused: not authorised.'
say "== nothing of the refused publishes in the stream: berth hub monitor-events --from-start --timeout 2s"
berth hub monitor-events --from-start --properties all --timeout 2s >"$MON.3" 2>"$MON.3.err" || die "monitor-events failed: $(cat "$MON.3.err")"
say "  monitor: $(events_of "$MON.3" | jq -c '[.event.origin, .event.payload]' | tr -d '\n')"
check "monitor: the stream holds the two accepted messages only" "$(events_of "$MON.3" | jq -r '.event.origin' | paste -sd, -)" "$REGID,$DEV"
