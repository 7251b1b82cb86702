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
# wrong key must get CONNACK 5, and neither may reach the stream.
#
# Then twins, direct methods and cloud-to-device messages on the same hub
# session, with stock mosquitto_sub / mosquitto_pub and the berth CLI as the
# service:
#
#   SUB q1   $iothub/twin/PATCH/properties/desired/#   <- berth hub device-twin update --desired …
#            gets $iothub/twin/PATCH/properties/desired/?$version=2 {"…","$version":2}
#   PUB q1   $iothub/twin/PATCH/properties/reported/?$rid=2 {…}   -> PUBACK, seen in berth hub device-twin show
#   SUB q1   $iothub/methods/POST/#                     <- berth hub invoke-device-method --method-name reboot
#            gets $iothub/methods/POST/reboot/?$rid=1 {payload}
#   SUB q1   devices/{device}/messages/devicebound/#    <- berth hub c2d send --props 'a=1;b=2'
#            gets devices/{device}/messages/devicebound/%24.mid=…&%24.to=%2Fdevices%2F{device}%2Fmessages%2FdeviceBound&…&a=1&b=2
#
# (why the twin GET, the PATCH's 204 and a method answer are not here: see
# the comment above those steps). Exits non-zero on any mismatch. Env: BERTH_BIN (default bin/berth), BERTH_IP (default: a free random
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

# --- IoT hub: twins, direct methods and cloud-to-device over MQTT ---
# Microsoft's "Communicate with an IoT hub using the MQTT protocol" page and
# the IoTMQTTSample mosquitto CLI how-to, with stock mosquitto_sub and
# mosquitto_pub on the hub session of the provisioned devices; the service
# side is the berth CLI (berth hub device-twin / invoke-device-method / c2d).
#
# What the stock clients can and cannot do: mosquitto_rr refuses a
# wildcard response topic ("Invalid response topic … does it contain '+'
# or '#'?"), so it subscribes to the one answer it waits for
# ('$iothub/twin/res/200/?$rid=1'), which berth takes as the twin-response
# subscription (as it does for the DPS answers). A method answer must come
# on the connection that received the request, and mosquitto_rr publishes
# before it listens, so the method is checked by the request a subscribed
# mosquitto_sub receives; the method answer is the SDK and Go tests' part.
need stdbuf date
SUB_PID=
SUB_RC=0
stop_sub() {
	if [[ -n $SUB_PID ]] && kill -0 "$SUB_PID" 2>/dev/null; then
		kill -TERM "$SUB_PID" 2>/dev/null || true
		wait "$SUB_PID" 2>/dev/null || true
	fi
	SUB_PID=
}
# finish (common.sh) reads the script's exit status from $?; set +e keeps
# (exit N) from ending the trap before finish runs.
trap 'rc_=$?; stop_sub; set +e; (exit "$rc_"); finish' EXIT

# sub_start OUT DEVICE PASSWORD COUNT FILTER: stock mosquitto_sub -d on the
# device's hub session in the background, QoS 1, until COUNT messages came
# or 15 s passed; each message is one "MSG {qos} {topic} {payload}" line of OUT.
sub_start() {
	local out=$1 user="$HUB/$2/?api-version=$HUB_API"
	say "  mosquitto_sub -h $MQTT_HOST -p $MQTT_PORT --cafile CA -V mqttv311 -q 1 -i '$2' -u '$user' -P SAS -t '$5' -C $4 -W 15 -v &"
	# stdbuf: line-buffered stdout, so sub_ready sees the SUBACK line in OUT at once.
	stdbuf -oL mosquitto_sub -d -h "$MQTT_HOST" -p "$MQTT_PORT" --cafile "$CA" -V mqttv311 -q 1 -i "$2" -u "$user" -P "$3" \
		-t "$5" -C "$4" -W 15 -F 'MSG %q %t %p' >"$out" 2>&1 &
	SUB_PID=$!
}
# sub_ready OUT: waits (up to 5 s) for the SUBACK of sub_start's subscriber.
sub_ready() {
	local i
	for i in $(seq 50); do
		grep -q '^Subscribed (mid: [0-9]*): ' "$1" && return 0
		kill -0 "$SUB_PID" 2>/dev/null || break
		sleep 0.1
	done
	say "$(sed 's/^/  | /' "$1")"
	die "mosquitto_sub did not subscribe"
}
# sub_wait OUT: waits for sub_start's subscriber (bounded by its -W 15);
# sets SUB_RC and SUB_MSGS (the "{qos} {topic} {payload}" lines).
sub_wait() {
	SUB_RC=0
	wait "$SUB_PID" || SUB_RC=$?
	SUB_PID=
	say "$(sed 's/^/  | /' "$1")"
	say "  exit status $SUB_RC"
	SUB_MSGS=$(sed -n 's/^MSG //p' "$1")
}
# msg_field N FIELD: field 1 (QoS), 2 (topic) or 3 (payload) of message N of SUB_MSGS.
msg_field() {
	local line
	line=$(sed -n "${1}p" <<<"$SUB_MSGS")
	case $2 in
	1) printf '%s' "${line%% *}" ;;
	2) line=${line#* } && printf '%s' "${line%% *}" ;;
	3) line=${line#* } && printf '%s' "${line#* }" ;;
	esac
}
# json_same JSON: JSON with sorted keys, compact (member order is not significant).
json_same() { jq -cS . <<<"$1" 2>/dev/null || printf '<not JSON: %s>\n' "$1"; }
# ms_of TIME: an RFC 3339 time as Unix milliseconds.
ms_of() { date -u -d "$1" +%s%3N 2>/dev/null || printf '<not a time: %s>\n' "$1"; }

say "== twin: mosquitto_sub on \$iothub/twin/PATCH/properties/desired/# gets the service's desired patch"
sub_start "$DATA/desired" "$REGID" "$HUB_SAS" 1 '$iothub/twin/PATCH/properties/desired/#'
sub_ready "$DATA/desired"
say "  berth hub device-twin update -d $REGID --desired '{\"rate\":5,\"mode\":\"eco\"}'"
OUT=$(berth hub device-twin update -d "$REGID" --desired '{"rate":5,"mode":"eco"}') || die "berth hub device-twin update failed: $OUT"
check "device-twin update: desired \$version" "$(jqr '.properties.desired["$version"]' "$OUT")" 2
sub_wait "$DATA/desired"
check "desired subscriber: exit status" "$SUB_RC" 0
check_match "desired subscriber: SUBACK grants QoS 1" "$(grep -o 'Subscribed (mid: [0-9]*): [0-9]*' "$DATA/desired" | head -n 1)" ': 1$'
check "desired subscriber: one message" "$(grep -c . <<<"$SUB_MSGS" || true)" 1
check "desired notification: topic" "$(msg_field 1 2)" '$iothub/twin/PATCH/properties/desired/?$version=2'
check "desired notification: delivered at QoS 1" "$(msg_field 1 1)" 1
check "desired notification: body is the patch with \$version" "$(json_same "$(msg_field 1 3)")" '{"$version":2,"mode":"eco","rate":5}'

say "== twin: mosquitto_pub sends a reported PATCH (QoS 1)"
hub_pub "$REGID" "$HUB_SAS" '$iothub/twin/PATCH/properties/reported/?$rid=2' '{"temp":21.5,"fw":"1.0.2"}'
check "reported PATCH: mosquitto_pub exit status" "$P_RC" 0
check_match "reported PATCH: PUBACK" "$(grep -o 'received PUBACK' <<<"$P_LOG" | head -n 1)" 'received PUBACK'
say "  berth hub device-twin show -d $REGID"
OUT=$(berth hub device-twin show -d "$REGID") || die "berth hub device-twin show failed: $OUT"
say "  $(jq -c .properties <<<"$OUT" 2>/dev/null || printf "%s" "$OUT")"
check "twin after the PATCH: reported temp" "$(jqr .properties.reported.temp "$OUT")" 21.5
check "twin after the PATCH: reported fw" "$(jqr .properties.reported.fw "$OUT")" 1.0.2
check "twin after the PATCH: reported \$version" "$(jqr '.properties.reported["$version"]' "$OUT")" 2
check "twin after the PATCH: desired untouched" "$(jqr '[.properties.desired.rate, .properties.desired.mode, .properties.desired["$version"]] | join(",")' "$OUT")" 5,eco,2

say "== twin: mosquitto_rr asks for the twin and reads the answer"
TWIN_USER="$HUB/$REGID/?api-version=2021-04-12"
say "  mosquitto_rr -h $MQTT_HOST -p $MQTT_PORT --cafile CA -V mqttv311 -i '$REGID' -u '$TWIN_USER' -P SAS -t '\$iothub/twin/GET/?\$rid=7' -e '\$iothub/twin/res/200/?\$rid=7' -n"
TWIN_RC=0
TWIN=$(timeout 20 mosquitto_rr -h "$MQTT_HOST" -p "$MQTT_PORT" --cafile "$CA" -V mqttv311 -i "$REGID" -u "$TWIN_USER" -P "$HUB_SAS" \
	-t '$iothub/twin/GET/?$rid=7' -e '$iothub/twin/res/200/?$rid=7' -n -W 10 2>&1) || TWIN_RC=$?
check "twin GET: mosquitto_rr exit status" "$TWIN_RC" 0
check "twin GET: reported as the PATCH left it" "$(jq -c '[.reported.temp, .reported.fw, .reported["$version"]]' <<<"$TWIN" 2>/dev/null || printf '<not JSON: %s>' "$TWIN")" '[21.5,"1.0.2",2]'
check "twin GET: desired with its \$version, no tags or \$metadata" "$(json_same "$(jq -c .desired <<<"$TWIN" 2>/dev/null)")" '{"$version":2,"mode":"eco","rate":5}'
say "  mosquitto_rr … -t '\$iothub/twin/PATCH/properties/reported/?\$rid=8' -e '\$iothub/twin/res/204/?\$rid=8&\$version=3' -m '{\"temp\":22}'"
TWIN_RC=0
TWIN=$(timeout 20 mosquitto_rr -h "$MQTT_HOST" -p "$MQTT_PORT" --cafile "$CA" -V mqttv311 -i "$REGID" -u "$TWIN_USER" -P "$HUB_SAS" \
	-t '$iothub/twin/PATCH/properties/reported/?$rid=8' -e '$iothub/twin/res/204/?$rid=8&$version=3' -m '{"temp":22}' -W 10 -v 2>&1) || TWIN_RC=$?
check "reported PATCH answered on \$iothub/twin/res/204/?\$rid=8&\$version=3" "$TWIN_RC" 0
check "reported PATCH answer: topic and empty body" "$TWIN" '$iothub/twin/res/204/?$rid=8&$version=3 (null)'

say "== direct method: no device connected"
say "  berth hub invoke-device-method -d $REGID --method-name reboot --method-payload '{\"delay\":1}' --timeout 5"
RC=0
OUT=$(berth hub invoke-device-method -d "$REGID" --method-name reboot --method-payload '{"delay":1}' --timeout 5 2>&1) || RC=$?
say "  $OUT"
check_match "invoke-device-method, device offline: fails" "$RC" '^[1-9][0-9]*$'
check_match "invoke-device-method, device offline: 404 DeviceNotOnline" "$OUT" '404 Not Found \(DeviceNotOnline\)'

say "== direct method: mosquitto_sub on \$iothub/methods/POST/# gets the request"
sub_start "$DATA/methods" "$REGID" "$HUB_SAS" 1 '$iothub/methods/POST/#'
sub_ready "$DATA/methods"
say "  berth hub invoke-device-method -d $REGID --method-name reboot --method-payload '{\"delay\":1}' --timeout 5"
RC=0
OUT=$(berth hub invoke-device-method -d "$REGID" --method-name reboot --method-payload '{"delay":1}' --timeout 5 2>&1) || RC=$?
say "  $OUT"
sub_wait "$DATA/methods"
check "methods subscriber: exit status" "$SUB_RC" 0
check_match "methods subscriber: SUBACK grants QoS 1" "$(grep -o 'Subscribed (mid: [0-9]*): [0-9]*' "$DATA/methods" | head -n 1)" ': 1$'
check "method request: topic (the connection's first rid, nothing after it)" "$(msg_field 1 2)" '$iothub/methods/POST/reboot/?$rid=1'
check "method request: delivered at QoS 1 (the granted QoS)" "$(msg_field 1 1)" 1
check "method request: body is the call's payload" "$(msg_field 1 3)" '{"delay":1}'
# mosquitto_sub leaves after the request without answering: the call ends
# at once, as for a device that is not online, rather than at --timeout.
check_match "invoke-device-method, device left unanswered: fails" "$RC" '^[1-9][0-9]*$'
check_match "invoke-device-method, device left unanswered: 404 DeviceNotOnline" "$OUT" '404 Not Found \(DeviceNotOnline\)'

say "== C2D: a message queued before $DEV connects and one sent while mosquitto_sub listens"
say "  berth hub c2d send -d $DEV --data 'hello mqtt' --props 'a=1;b=2'"
SEND1=$(berth hub c2d send -d "$DEV" --data 'hello mqtt' --props 'a=1;b=2') || die "berth hub c2d send failed: $SEND1"
say "  $(jq -c . <<<"$SEND1" 2>/dev/null || printf "%s" "$SEND1")"
MID1=$(jqr '.messageId // empty' "$SEND1")
check_match "c2d send: a generated messageId" "$MID1" '^[A-Za-z0-9-]+$'
sub_start "$DATA/c2d" "$DEV" "$DEV_SAS" 2 "devices/$DEV/messages/devicebound/#"
sub_ready "$DATA/c2d"
say "  berth hub c2d send -d $DEV --data '{\"led\":\"on\"}' --message-id c2d-2 --correlation-id corr-2 --user-id user-2 --content-type application/json --content-encoding utf-8 --ack full --props 'prio=high'"
SEND2=$(berth hub c2d send -d "$DEV" --data '{"led":"on"}' --message-id c2d-2 --correlation-id corr-2 --user-id user-2 \
	--content-type application/json --content-encoding utf-8 --ack full --props 'prio=high') || die "berth hub c2d send failed: $SEND2"
say "  $(jq -c . <<<"$SEND2" 2>/dev/null || printf "%s" "$SEND2")"
check "c2d send: messageId kept" "$(jqr .messageId "$SEND2")" c2d-2
sub_wait "$DATA/c2d"
check "C2D subscriber: exit status" "$SUB_RC" 0
check_match "C2D subscriber: SUBACK grants QoS 1" "$(grep -o 'Subscribed (mid: [0-9]*): [0-9]*' "$DATA/c2d" | head -n 1)" ': 1$'
check "C2D subscriber: two messages" "$(grep -c . <<<"$SUB_MSGS" || true)" 2
C2D_TO="%24.to=%2Fdevices%2F$DEV%2Fmessages%2FdeviceBound"
EXP_RE='%24\.exp=([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}%3A[0-9]{2}%3A[0-9]{2}\.[0-9]{3}Z)'
T=$(msg_field 1 2)
check_match "queued C2D: topic" "$T" "^devices/$DEV/messages/devicebound/%24\\.mid=$MID1&$C2D_TO&$EXP_RE&a=1&b=2\$"
[[ $T =~ $EXP_RE ]] && EXP=${BASH_REMATCH[1]//%3A/:} || EXP=
check "queued C2D: \$.exp = the expiryTimeUtc c2d send printed" "$(ms_of "$EXP")" "$(ms_of "$(jqr .expiryTimeUtc "$SEND1")")"
check "queued C2D: delivered at QoS 1" "$(msg_field 1 1)" 1
check "queued C2D: payload" "$(msg_field 1 3)" 'hello mqtt'
T=$(msg_field 2 2)
check_match "live C2D: topic" "$T" "^devices/$DEV/messages/devicebound/%24\\.mid=c2d-2&%24\\.cid=corr-2&%24\\.uid=user-2&$C2D_TO&$EXP_RE&%24\\.ct=application%2Fjson&%24\\.ce=utf-8&iothub-ack=full&prio=high\$"
[[ $T =~ $EXP_RE ]] && EXP=${BASH_REMATCH[1]//%3A/:} || EXP=
check "live C2D: \$.exp = the expiryTimeUtc c2d send printed" "$(ms_of "$EXP")" "$(ms_of "$(jqr .expiryTimeUtc "$SEND2")")"
check "live C2D: delivered at QoS 1" "$(msg_field 2 1)" 1
check "live C2D: payload" "$(msg_field 2 3)" '{"led":"on"}'
check "mosquitto_sub PUBACKed both" "$(grep -c 'sending PUBACK' "$DATA/c2d" || true)" 2
# The PUBACK completes a message
# (docs/spec/iothub-protocol.md#cloud-to-device-over-mqtt), but the hub does
# the store call after it acknowledged nothing to anybody, so a service call
# right after the PUBACK may still count the message: wait (up to 5 s) for the
# queue to empty, then purge must find nothing.
say "== the PUBACKs completed both: berth hub device-identity show -d $DEV until cloudToDeviceMessageCount is 0, then berth hub c2d purge"
for i in $(seq 50); do
	N=$(berth hub device-identity show -d "$DEV" | jq -r .cloudToDeviceMessageCount) || die "berth hub device-identity show failed"
	[[ $N == 0 ]] && break
	sleep 0.1
done
say "  cloudToDeviceMessageCount $N after $i look(s)"
check "device-identity show: cloudToDeviceMessageCount" "$N" 0
OUT=$(berth hub c2d purge -d "$DEV") || die "berth hub c2d purge failed: $OUT"
say "  $(jq -c . <<<"$OUT" 2>/dev/null || printf "%s" "$OUT")"
check "c2d purge: totalMessagesPurged" "$(jqr .totalMessagesPurged "$OUT")" 0

# Microsoft's own mosquitto sample (Azure-Samples/IoTMQTTSample,
# src/Mosquitto_pub/readme.md, "Subscribe to events") receives C2D with
# mosquitto_sub -t "#"; IoT Hub delivers on it, so berth does too.
say "== C2D as Microsoft's mosquitto sample receives it: mosquitto_sub -t '#'"
OUT=$(berth hub c2d send -d "$DEV" --data 'hello sample' --message-id sample-1) || die "berth hub c2d send failed: $OUT"
sub_start "$DATA/c2d-hash" "$DEV" "$DEV_SAS" 1 '#'
sub_wait "$DATA/c2d-hash"
check "mosquitto_sub -t '#': exit status" "$SUB_RC" 0
check_match "mosquitto_sub -t '#': SUBACK grants QoS 1" "$(grep -o 'Subscribed (mid: [0-9]*): [0-9]*' "$DATA/c2d-hash" | head -n 1)" ': 1$'
check_match "mosquitto_sub -t '#': the C2D topic" "$(msg_field 1 2)" "^devices/$DEV/messages/devicebound/%24\\.mid=sample-1&"
check "mosquitto_sub -t '#': payload" "$(msg_field 1 3)" 'hello sample'
