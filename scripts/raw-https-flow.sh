#!/usr/bin/env bash
# The raw HTTPS provisioning flow of Microsoft's "How to use symmetric keys
# over HTTPS without an SDK" page, with curl, against a berth this script
# starts on its own loopback address:
#
#   curl -L -i -X PUT --cacert CA -H 'Content-Type: application/json' -H 'Content-Encoding: utf-8' \
#        -H "Authorization: $SAS" -d '{"registrationId":"…"}' \
#        https://HOST/{scope}/registrations/{id}/register?api-version=2021-06-01        -> 202 assigning
#   curl -L -i -X GET … https://HOST/{scope}/registrations/{id}/operations/{opId}?api-version=2021-06-01
#                                                                                     -> 200 assigned
#
# Checks statuses, headers and JSON bodies, assignedHub and deviceId, and that
# a wrong key gets 401 with errorCode 401002.
#
# Then the provisioned devices send telemetry to the hub DPS assigned, with the
# REST "Send Device Event" call:
#
#   curl -i --cacert CA -X POST -H "authorization: $HUB_SAS" -H 'iothub-app-unit: celsius' \
#        -H 'iothub-messageid: m-1' --data '{"t":21}' \
#        "https://HUB/devices/DEVICE/messages/events?api-version=2021-04-12"             -> 204
#
# (HUB_SAS: sr={hub}/devices/{device}, computed with openssl as Microsoft's
# docs do, or berth hub sas-token), and `berth hub monitor-events --from-start
# --device-id … --properties all` must print it with its properties. Another
# device's token must get 401 with iothub-errorcode IotHubUnauthorizedAccess,
# a 257 KB body 413 MessageTooLarge, and neither may reach the stream.
#
# Then twins, direct methods and cloud-to-device messages, with curl: the
# service REST calls with a hub service token (computed with openssl from
# client.json's hubConnectionString, or berth hub sas-token):
#
#   GET   /twins/{id}                       -> 200, header ETag: "{etag}"
#   PATCH /twins/{id}  If-Match: "{etag}"   -> 200 merged; stale etag 412 PreconditionFailed
#   POST  /twins/{id}/methods               -> 404 DeviceNotOnline (an HTTPS device takes no methods)
#   POST  /devices/{id}/messages/deviceBound (berth's C2D send extension) -> 200 {messageId, …}
#   DELETE /devices/{id}/commands           -> 200 {"totalMessagesPurged":n,…}
#
# and the device's C2D poll with its device token:
#
#   GET    /devices/{id}/messages/deviceBound?api-version=2021-04-12   -> 200 + ETag: "{lock}" + iothub-* (204 when empty)
#   POST   /devices/{id}/messages/deviceBound/{lock}/abandon           -> 204, redelivered with deliverycount 2
#   DELETE /devices/{id}/messages/deviceBound/{lock}                   -> 204 (stale lock: 412 DeviceMessageLockLost)
#   DELETE /devices/{id}/messages/deviceBound/{lock}?…&reject          -> 204, not redelivered
#
# Exits non-zero on any mismatch.
# Env: BERTH_BIN (default bin/berth), BERTH_IP (default: a free random
# 127.64.0.0/10 address).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
need curl jq openssl base64 od timeout

IP=${BERTH_IP:-$(free_ip)}
API=2021-06-01
start_berth "$IP"

# https_call METHOD PATH AUTHORIZATION [BODY]: sets H_STATUS, H_HEADERS, H_BODY.
https_call() {
	local out args=(-L -i -sS -X "$1" --cacert "$CA" -H 'Content-Type: application/json' -H 'Content-Encoding: utf-8')
	if [[ -n $3 ]]; then args+=(-H "Authorization: $3"); fi
	if (($# > 3)); then args+=(-d "$4"); fi
	if [[ $HTTPS_HOST != "$HOST" || $HTTPS_PORT != 443 ]]; then args+=(--connect-to "$HOST:443:$HTTPS_HOST:$HTTPS_PORT"); fi
	say "  curl -L -i -X $1 --cacert CA -H 'Content-Type: application/json' -H 'Content-Encoding: utf-8' ${3:+-H 'Authorization: SAS' }${4:+-d '$4' }https://$HOST$2"
	if ! out=$(curl "${args[@]}" "https://$HOST$2" 2>&1); then
		H_STATUS= H_HEADERS= H_BODY=
		say "  curl failed: $out"
		return 1
	fi
	split_response "$out"
}

# split_response CURL-I-OUTPUT: sets H_STATUS, H_HEADERS, H_BODY.
split_response() {
	local out=${1//$'\r'/}
	# an interim "HTTP/1.1 100 Continue" (curl sends Expect: 100-continue for large bodies)
	while [[ $out == HTTP/*' 100 '* && $out == *$'\n\n'* ]]; do out=${out#*$'\n\n'}; done
	H_HEADERS=${out%%$'\n\n'*}
	H_BODY=${out#*$'\n\n'}
	[[ $H_BODY == "$out" ]] && H_BODY=
	H_STATUS=$(head -n 1 <<<"$H_HEADERS" | awk '{print $2}')
	say "  <- $(head -n 1 <<<"$H_HEADERS") ${H_BODY:0:300}"
}

# hub_post DEVICE AUTHORIZATION CURL-ARGS...: the doc's telemetry call,
# curl -i --cacert CA -X POST -H "authorization: SAS" CURL-ARGS
# https://HUB/devices/DEVICE/messages/events?api-version=2021-04-12;
# sets H_STATUS, H_HEADERS, H_BODY.
hub_post() {
	local dev=$1 auth=$2 out url args
	shift 2
	url="https://$HUB/devices/$dev/messages/events?api-version=$HUB_API"
	args=(-i -sS --cacert "$CA" -X POST -H "authorization: $auth" "$@")
	if [[ $HTTPS_HOST != "$HUB" || $HTTPS_PORT != 443 ]]; then args+=(--connect-to "$HUB:443:$HTTPS_HOST:$HTTPS_PORT"); fi
	say "  curl -i --cacert CA -X POST -H 'authorization: SAS' $* '$url'"
	if ! out=$(curl "${args[@]}" "$url" 2>&1); then
		H_STATUS= H_HEADERS= H_BODY=
		say "  curl failed: ${out:0:300}"
		return 1
	fi
	split_response "$out"
}

# header NAME: the value of a response header of the last call (case-insensitive name).
header() { grep -i "^$1:" <<<"$H_HEADERS" | head -n 1 | cut -d: -f2- | sed 's/^ *//' || true; }

# provision LABEL REGID SAS EXPECTED_DEVICE_ID
provision() {
	local label=$1 regid=$2 sas=$3 want_dev=$4 opid status tries retry
	say "== $label: register $regid"
	https_call PUT "/$SCOPE/registrations/$regid/register?api-version=$API" "$sas" "{\"registrationId\":\"$regid\"}" || die "$label: PUT failed"
	check "$label: PUT register status" "$H_STATUS" 202
	check_match "$label: PUT register Content-Type" "$(header Content-Type)" '^application/json'
	check_match "$label: PUT register Retry-After (delta seconds)" "$(header Retry-After)" '^[0-9]+$'
	# The C SDK looks the header up with a case-sensitive strcmp on "retry-after".
	check "$label: PUT register header name spelled retry-after" "$(grep -o '^retry-after:' <<<"$H_HEADERS" || true)" 'retry-after:'
	check "$label: PUT register Location (the PUT URL without query)" "$(header Location)" "https://$HOST/$SCOPE/registrations/$regid/register"
	check "$label: PUT register body status" "$(jqr .status "$H_BODY")" assigning
	opid=$(jqr '.operationId // empty' "$H_BODY")
	check_match "$label: operationId present and URL-safe" "$opid" '^[^&=?#/+ ]+$'
	[[ -n $opid ]] || die "$label: no operationId"
	status=assigning tries=0 retry=$(header Retry-After)
	while [[ $status == assigning ]]; do
		tries=$((tries + 1))
		((tries <= 10)) || die "$label: still assigning after 10 polls"
		sleep "${retry:-3}"
		https_call GET "/$SCOPE/registrations/$regid/operations/$opid?api-version=$API" "$sas" || die "$label: GET failed"
		status=$(jqr .status "$H_BODY")
		retry=$(header Retry-After)
		if [[ $status == assigning ]]; then
			check "$label: GET operation while assigning" "$H_STATUS" 202
		fi
	done
	check "$label: GET operation status" "$H_STATUS" 200
	check "$label: status" "$status" assigned
	check "$label: operationId echoed" "$(jqr .operationId "$H_BODY")" "$opid"
	check "$label: registrationState.registrationId" "$(jqr .registrationState.registrationId "$H_BODY")" "$regid"
	check "$label: registrationState.assignedHub = client.json hubHostName" "$(jqr .registrationState.assignedHub "$H_BODY")" "$HUB"
	check "$label: registrationState.deviceId" "$(jqr .registrationState.deviceId "$H_BODY")" "$want_dev"
	check "$label: registrationState.status" "$(jqr .registrationState.status "$H_BODY")" assigned

	say "== $label: registration status lookup"
	https_call POST "/$SCOPE/registrations/$regid?api-version=$API" "$sas" "{\"registrationId\":\"$regid\"}" || die "$label: POST failed"
	check "$label: POST status lookup" "$H_STATUS" 200
	check "$label: status lookup assignedHub" "$(jqr .assignedHub "$H_BODY")" "$HUB"
	check "$label: status lookup deviceId" "$(jqr .deviceId "$H_BODY")" "$want_dev"
}

# --- individual enrollment, SAS computed as the doc's Python snippet does ---
REGID=raw-https-dev-1
KEY=$(random_key)
say "== berth enrollment create --enrollment-id $REGID --primary-key …"
OUT=$(berth enrollment create --enrollment-id "$REGID" --primary-key "$KEY") || die "berth enrollment create failed: $OUT"
say "  $(jq -c . <<<"$OUT" 2>/dev/null || printf "%s" "$OUT")"
check "enrollment create: registrationId" "$(jqr .registrationId "$OUT")" "$REGID"
check "enrollment create: primary key kept" "$(jqr .attestation.symmetricKey.primaryKey "$OUT")" "$KEY"
provision individual "$REGID" "$(docs_sas "$SCOPE" "$REGID" "$KEY")" "$REGID"

# --- enrollment group: derived key and SAS from the berth CLI ---
GROUP=raw-https-group
GKEY=$(random_key)
DEV=raw-https-grp-dev-1
say "== berth enrollment-group create --enrollment-id $GROUP --primary-key …"
OUT=$(berth enrollment-group create --enrollment-id "$GROUP" --primary-key "$GKEY") || die "berth enrollment-group create failed: $OUT"
say "  $(jq -c . <<<"$OUT" 2>/dev/null || printf "%s" "$OUT")"
check "enrollment-group create: enrollmentGroupId" "$(jqr .enrollmentGroupId "$OUT")" "$GROUP"
DKEY=$(berth device derive-key --group-key "$GKEY" --registration-id "$DEV" | cli_value '.derivedKey // .deviceKey // .key // .primaryKey') || die "berth device derive-key failed"
check "berth device derive-key = base64(HMAC-SHA256(group key, registration ID))" "$DKEY" "$(hmac_b64 "$GKEY" "$DEV")"
SAS=$(berth device sas-token --id-scope "$SCOPE" --registration-id "$DEV" --key "$DKEY" | cli_value '.sasToken // .token // .sas') || die "berth device sas-token failed"
check_match "berth device sas-token gives a SAS for $SCOPE/registrations/$DEV" "$SAS" "^SharedAccessSignature .*sr=$SCOPE(/|%2[fF])registrations(/|%2[fF])$DEV(&|$)"
provision group "$DEV" "$SAS" "$DEV"

# --- wrong key, no token ---
say "== wrong key: register $REGID with a SAS signed by another key"
https_call PUT "/$SCOPE/registrations/$REGID/register?api-version=$API" "$(docs_sas "$SCOPE" "$REGID" "$(random_key)")" "{\"registrationId\":\"$REGID\"}" || die "wrong key: PUT failed"
check "wrong key: status" "$H_STATUS" 401
check "wrong key: errorCode" "$(jqr .errorCode "$H_BODY")" 401002
check "wrong key: x-ms-error-code header" "$(header x-ms-error-code)" 401002
check_match "wrong key: Content-Type" "$(header Content-Type)" '^application/json'
check_match "wrong key: trackingId" "$(jqr '.trackingId // empty' "$H_BODY")" '.+'

say "== no Authorization header"
https_call PUT "/$SCOPE/registrations/$REGID/register?api-version=$API" "" "{\"registrationId\":\"$REGID\"}" || die "no token: PUT failed"
check "no token: status" "$H_STATUS" 401
check_match "no token: errorCode 401xxx" "$(jqr .errorCode "$H_BODY")" '^401[0-9]{3}$'

# --- IoT hub: device telemetry over HTTPS, the REST "Send Device Event" call ---
# The devices provisioned above connect to the hub DPS assigned ($HUB) with a
# hub SAS token (sr = {hub}/devices/{deviceId}) signed with their DPS key.
HUB_API=2021-04-12
MON=$DATA/monitor

say "== hub telemetry: $REGID POSTs an event, SAS computed with openssl as Microsoft's docs do"
HUB_SAS=$(hub_sas "$HUB" "$REGID" "$KEY")
monitor_start "$MON.1" --device-id "$REGID" --properties all --count 1 --timeout 20s
monitor_ready "$MON.1"
hub_post "$REGID" "$HUB_SAS" -H 'iothub-app-unit: celsius' -H 'iothub-messageid: m-1' --data '{"t":21}' || die "telemetry POST failed"
check "telemetry: status" "$H_STATUS" 204
check "telemetry: no body" "$H_BODY" ""
monitor_wait
check "monitor-events --count 1: exit status" "$MON_RC" 0
EV=$(events_of "$MON.1")
say "  monitor: $EV"
check "monitor: one event" "$(grep -c . <<<"$EV" || true)" 1
check "monitor: payload" "$(ev_payload "$EV")" '{"t":21}'
check "monitor: system message_id" "$(ev_sys "$EV" message_id)" m-1
check "monitor: annotation iothub-connection-device-id" "$(ev_anno "$EV" iothub-connection-device-id)" "$REGID"
check_match "monitor: annotation iothub-enqueuedtime (Unix ms)" "$(ev_anno "$EV" iothub-enqueuedtime)" '^1[0-9]{12}$'
check "monitor: annotation iothub-message-source" "$(ev_anno "$EV" iothub-message-source)" Telemetry
check "monitor: application unit" "$(ev_app "$EV" unit)" celsius
check "monitor: origin" "$(jqr '.event.origin' "$EV")" "$REGID"

say "== hub telemetry: $DEV POSTs an event with system properties, SAS from berth hub sas-token"
DEV_SAS=$(berth hub sas-token --device-id "$DEV" --key "$DKEY" | cli_value '.sas // .sasToken // .token') || die "berth hub sas-token failed"
check_match "berth hub sas-token: a SAS for $HUB/devices/$DEV" "$DEV_SAS" "^SharedAccessSignature .*sr=$HUB(/|%2[fF])devices(/|%2[fF])$DEV(&|$)"
monitor_start "$MON.2" --device-id "$DEV" --properties all --count 1 --timeout 20s
monitor_ready "$MON.2"
hub_post "$DEV" "$DEV_SAS" -H 'iothub-messageid: m-2' -H 'iothub-correlationid: c-2' \
	-H 'iothub-contenttype: application/json' -H 'iothub-contentencoding: utf-8' \
	-H 'iothub-app-unit: celsius' -H 'iothub-app-alert: false' --data '{"t":22.5,"h":40}' || die "telemetry POST failed"
check "telemetry with system properties: status" "$H_STATUS" 204
monitor_wait
check "monitor-events --count 1: exit status" "$MON_RC" 0
EV=$(events_of "$MON.2")
say "  monitor: $EV"
check "monitor: one event" "$(grep -c . <<<"$EV" || true)" 1
check "monitor: payload" "$(ev_payload "$EV")" '{"t":22.5,"h":40}'
check "monitor: system message_id" "$(ev_sys "$EV" message_id)" m-2
check "monitor: system correlation_id" "$(ev_sys "$EV" correlation_id)" c-2
check "monitor: system content_type" "$(ev_sys "$EV" content_type)" application/json
check "monitor: system content_encoding" "$(ev_sys "$EV" content_encoding)" utf-8
check "monitor: annotation iothub-connection-device-id" "$(ev_anno "$EV" iothub-connection-device-id)" "$DEV"
check "monitor: application unit" "$(ev_app "$EV" unit)" celsius
check "monitor: application alert" "$(ev_app "$EV" alert)" false

say "== hub telemetry refused: POST as $REGID with $DEV's token, then a 257 KB body"
hub_post "$REGID" "$DEV_SAS" -H 'iothub-messageid: must-not-arrive' --data '{"t":-1}' || die "foreign-token POST failed"
check "another device's token: status" "$H_STATUS" 401
check "another device's token: iothub-errorcode" "$(header iothub-errorcode)" IotHubUnauthorizedAccess
check_match "another device's token: error body names the code" "$(jqr '.Message // empty' "$H_BODY")" 'IotHubUnauthorizedAccess'
head -c $((257 * 1024)) /dev/zero | tr '\0' 'x' >"$DATA/257k.bin"
hub_post "$REGID" "$HUB_SAS" -H 'iothub-messageid: too-large' --data-binary "@$DATA/257k.bin" || die "257 KB POST failed"
check "257 KB body: status" "$H_STATUS" 413
check "257 KB body: iothub-errorcode" "$(header iothub-errorcode)" MessageTooLarge
say "== nothing of the refused POSTs in the stream: berth hub monitor-events --from-start --device-id $REGID --timeout 2s"
berth hub monitor-events --from-start --device-id "$REGID" --properties all --timeout 2s >"$MON.3" 2>"$MON.3.err" || die "monitor-events failed: $(cat "$MON.3.err")"
say "  monitor: $(events_of "$MON.3" | jq -c '[.event.properties.system.message_id]' | tr -d '\n')"
check "monitor: $REGID's events are m-1 alone" "$(events_of "$MON.3" | jq -r '.event.properties.system.message_id' | paste -sd, -)" m-1

# --- IoT hub: twins, direct methods and cloud-to-device over HTTPS ---
# The service REST calls (GET/PATCH /twins/{id}, POST /twins/{id}/methods,
# DELETE /devices/{id}/commands and berth's C2D send extension POST
# /devices/{id}/messages/deviceBound) with a hub service token, and the
# device's C2D poll (receive, abandon, complete, reject) with its device
# token, all with curl.
need date

# hub_call METHOD PATH AUTHORIZATION CURL-ARGS...: curl -i --cacert CA -X METHOD
# -H "authorization: …" CURL-ARGS https://HUB/PATH; sets H_STATUS, H_HEADERS, H_BODY.
hub_call() {
	local method=$1 path=$2 auth=$3 out url args
	shift 3
	url="https://$HUB$path"
	args=(-i -sS --cacert "$CA" -X "$method" -H "authorization: $auth" "$@")
	if [[ $HTTPS_HOST != "$HUB" || $HTTPS_PORT != 443 ]]; then args+=(--connect-to "$HUB:443:$HTTPS_HOST:$HTTPS_PORT"); fi
	say "  curl -i --cacert CA -X $method -H 'authorization: SAS' $* '$url'"
	if ! out=$(curl "${args[@]}" "$url" 2>&1); then
		H_STATUS= H_HEADERS= H_BODY=
		say "  curl failed: ${out:0:300}"
		return 1
	fi
	split_response "$out"
}

# service_sas HUB POLICY KEY [TTL]: a hub-scoped service token as the Python
# snippet of Microsoft's "Control access to IoT Hub with shared access
# signatures" page builds it from a connection string: sr = quote_plus(hub),
# skn = the policy name.
service_sas() {
	local sr se sig
	sr=$(urlenc "$1")
	se=$(($(date +%s) + ${4:-3600}))
	sig=$(hmac_b64 "$3" "$sr"$'\n'"$se")
	printf 'SharedAccessSignature sr=%s&sig=%s&se=%s&skn=%s' "$sr" "$(urlenc "$sig")" "$se" "$2"
}

# etag_header: the value of a header named exactly "ETag" (the C SDK looks
# it up case-sensitively).
etag_header() { sed -n 's/^ETag: //p' <<<"$H_HEADERS" | head -n 1; }

say "== service token: from client.json's hubConnectionString, computed with openssl, and from berth hub sas-token"
HCS=$(jq -r .hubConnectionString "$DATA/client.json")
HCS_POLICY=$(tr ';' '\n' <<<"$HCS" | sed -n 's/^SharedAccessKeyName=//p')
HCS_KEY=$(tr ';' '\n' <<<"$HCS" | sed -n 's/^SharedAccessKey=//p')
check "hubConnectionString: policy" "$HCS_POLICY" iothubowner
check "hubConnectionString: HostName = hubHostName" "$(tr ';' '\n' <<<"$HCS" | sed -n 's/^HostName=//p')" "$HUB"
SVC_SAS=$(service_sas "$HUB" "$HCS_POLICY" "$HCS_KEY")
CLI_SVC_SAS=$(berth hub sas-token | cli_value '.sas // .sasToken // .token') || die "berth hub sas-token failed"
check_match "berth hub sas-token: a service SAS for $HUB, skn=iothubowner" "$CLI_SVC_SAS" "^SharedAccessSignature (.*&)?sr=$HUB(&.*)?&skn=iothubowner(&|$)|^SharedAccessSignature (.*&)?skn=iothubowner&(.*&)?sr=$HUB(&|$)"

say "== twin: GET /twins/$REGID"
hub_call GET "/twins/$REGID?api-version=$HUB_API" "$SVC_SAS" || die "twin GET failed"
check "GET twin: status" "$H_STATUS" 200
check_match "GET twin: Content-Type" "$(header Content-Type)" '^application/json'
ETAG1=$(jqr '.etag // empty' "$H_BODY")
check_match "GET twin: etag" "$ETAG1" '.+'
check "GET twin: header named exactly ETag, the quoted etag" "$(etag_header)" "\"$ETAG1\""
check "GET twin: deviceId" "$(jqr .deviceId "$H_BODY")" "$REGID"
check "GET twin: desired \$version" "$(jqr '.properties.desired["$version"]' "$H_BODY")" 1
check "GET twin: reported \$version" "$(jqr '.properties.reported["$version"]' "$H_BODY")" 1
hub_call GET "/twins/$REGID?api-version=$HUB_API" "$HUB_SAS" || die "twin GET failed"
check "GET twin with the device's token (no ServiceConnect): status" "$H_STATUS" 401
check "GET twin with the device's token: iothub-errorcode" "$(header iothub-errorcode)" IotHubUnauthorizedAccess

say "== twin: PATCH /twins/$REGID with If-Match"
hub_call PATCH "/twins/$REGID?api-version=$HUB_API" "$SVC_SAS" -H "If-Match: \"$ETAG1\"" -H 'Content-Type: application/json' \
	--data '{"tags":{"floor":3},"properties":{"desired":{"rate":5,"mode":"eco"}}}' || die "twin PATCH failed"
check "PATCH twin: status" "$H_STATUS" 200
ETAG2=$(jqr '.etag // empty' "$H_BODY")
check_match "PATCH twin: a new etag" "$ETAG2" "^(.+)$"
check_match "PATCH twin: the etag changed" "$([[ $ETAG2 != "$ETAG1" ]] && echo changed || echo same)" '^changed$'
check "PATCH twin: ETag header" "$(etag_header)" "\"$ETAG2\""
check "PATCH twin: tags.floor" "$(jqr .tags.floor "$H_BODY")" 3
check "PATCH twin: desired rate, mode, \$version" "$(jqr '[.properties.desired.rate, .properties.desired.mode, .properties.desired["$version"]] | join(",")' "$H_BODY")" 5,eco,2
hub_call PATCH "/twins/$REGID?api-version=$HUB_API" "$SVC_SAS" -H "If-Match: \"$ETAG1\"" -H 'Content-Type: application/json' \
	--data '{"properties":{"desired":{"rate":6}}}' || die "twin PATCH failed"
check "PATCH twin with a stale If-Match: status" "$H_STATUS" 412
check "PATCH twin with a stale If-Match: iothub-errorcode" "$(header iothub-errorcode)" PreconditionFailed
hub_call PATCH "/twins/$REGID?api-version=$HUB_API" "$SVC_SAS" -H 'If-Match: "*"' -H 'Content-Type: application/json' \
	--data '{"properties":{"desired":{"mode":null}}}' || die "twin PATCH failed"
check "PATCH twin with If-Match \"*\", null deletes: status" "$H_STATUS" 200
check "PATCH twin with If-Match \"*\": desired is rate 5 alone, \$version 3" "$(jqr '.properties.desired | [(del(.["$metadata"], .["$version"]) | tojson), .["$version"]] | join(" ")' "$H_BODY")" '{"rate":5} 3'

say "== direct method: POST /twins/$REGID/methods (an HTTPS device never takes methods)"
hub_call POST "/twins/$REGID/methods?api-version=$HUB_API" "$SVC_SAS" -H 'Content-Type: application/json' \
	--data '{"methodName":"reboot","payload":{"delay":1},"responseTimeoutInSeconds":5,"connectTimeoutInSeconds":0}' || die "method POST failed"
check "invoke method, device not connected: status" "$H_STATUS" 404
check "invoke method, device not connected: iothub-errorcode" "$(header iothub-errorcode)" DeviceNotOnline
check_match "invoke method, device not connected: error body" "$(jqr '.Message // empty' "$H_BODY")" '^ErrorCode:DeviceNotOnline;'

DB="/devices/$REGID/messages/deviceBound"
say "== C2D: the service sends with curl (berth's REST extension), the device polls, abandons and completes"
hub_call POST "$DB?api-version=$HUB_API" "$CLI_SVC_SAS" -H 'iothub-messageid: c2d-1' -H 'iothub-correlationid: corr-1' \
	-H 'iothub-app-color: red' --data-binary 'hello https' || die "C2D send failed"
check "C2D send: status" "$H_STATUS" 200
SEND=$H_BODY
check "C2D send: messageId" "$(jqr .messageId "$SEND")" c2d-1
check_match "C2D send: sequenceNumber" "$(jqr .sequenceNumber "$SEND")" '^[1-9][0-9]*$'
hub_call GET "$DB?api-version=$HUB_API" "$HUB_SAS" || die "C2D receive failed"
check "C2D receive: status" "$H_STATUS" 200
LOCK1=$(etag_header)
check_match "C2D receive: header named exactly ETag, a quoted lock token" "$LOCK1" '^"[^"]+"$'
LOCK1=${LOCK1//\"/}
check "C2D receive: Content-Type" "$(header Content-Type)" application/octet-stream
check "C2D receive: iothub-messageid" "$(header iothub-messageid)" c2d-1
check "C2D receive: iothub-correlationid" "$(header iothub-correlationid)" corr-1
check "C2D receive: iothub-to" "$(header iothub-to)" "/devices/$REGID/messages/deviceBound"
check "C2D receive: iothub-deliverycount" "$(header iothub-deliverycount)" 1
check "C2D receive: iothub-sequencenumber = the send's sequenceNumber" "$(header iothub-sequencenumber)" "$(jqr .sequenceNumber "$SEND")"
check "C2D receive: iothub-enqueuedtime = the send's enqueuedTimeUtc" "$(date -u -d "$(header iothub-enqueuedtime)" +%s%3N 2>/dev/null)" "$(date -u -d "$(jqr .enqueuedTimeUtc "$SEND")" +%s%3N 2>/dev/null)"
check "C2D receive: iothub-expiry = the send's expiryTimeUtc" "$(date -u -d "$(header iothub-expiry)" +%s%3N 2>/dev/null)" "$(date -u -d "$(jqr .expiryTimeUtc "$SEND")" +%s%3N 2>/dev/null)"
check "C2D receive: iothub-app-color" "$(header iothub-app-color)" red
check "C2D receive: body" "$H_BODY" 'hello https'
hub_call POST "$DB/$LOCK1/abandon?api-version=$HUB_API" "$HUB_SAS" || die "C2D abandon failed"
check "C2D abandon: status" "$H_STATUS" 204
hub_call GET "$DB?api-version=$HUB_API" "$HUB_SAS" || die "C2D receive failed"
check "C2D receive after abandon: status" "$H_STATUS" 200
check "C2D receive after abandon: the same message" "$(header iothub-messageid)" c2d-1
check "C2D receive after abandon: iothub-deliverycount" "$(header iothub-deliverycount)" 2
LOCK2=$(etag_header)
LOCK2=${LOCK2//\"/}
check_match "C2D receive after abandon: a new lock token" "$([[ -n $LOCK2 && $LOCK2 != "$LOCK1" ]] && echo new || echo "same: $LOCK2")" '^new$'
hub_call DELETE "$DB/$LOCK1?api-version=$HUB_API" "$HUB_SAS" || die "C2D complete failed"
check "C2D complete with the abandoned lock: status" "$H_STATUS" 412
check "C2D complete with the abandoned lock: iothub-errorcode" "$(header iothub-errorcode)" DeviceMessageLockLost
hub_call DELETE "$DB/$LOCK2?api-version=$HUB_API" "$HUB_SAS" || die "C2D complete failed"
check "C2D complete: status" "$H_STATUS" 204
hub_call GET "$DB?api-version=$HUB_API" "$HUB_SAS" || die "C2D receive failed"
check "C2D receive, queue empty: status" "$H_STATUS" 204
check "C2D receive, queue empty: no body" "$H_BODY" ""

say "== C2D: sent with berth hub c2d send --props, rejected by the device"
say "  berth hub c2d send -d $REGID --data 'reject me' --message-id c2d-2 --props 'a=1;b=2'"
OUT=$(berth hub c2d send -d "$REGID" --data 'reject me' --message-id c2d-2 --props 'a=1;b=2') || die "berth hub c2d send failed: $OUT"
check "c2d send: messageId" "$(jqr .messageId "$OUT")" c2d-2
hub_call GET "$DB?api-version=$HUB_API" "$HUB_SAS" || die "C2D receive failed"
check "C2D receive: status" "$H_STATUS" 200
check "C2D receive: iothub-messageid" "$(header iothub-messageid)" c2d-2
check "C2D receive: iothub-app-a" "$(header iothub-app-a)" 1
check "C2D receive: iothub-app-b" "$(header iothub-app-b)" 2
check "C2D receive: body" "$H_BODY" 'reject me'
LOCK=$(etag_header)
LOCK=${LOCK//\"/}
hub_call DELETE "$DB/$LOCK?api-version=$HUB_API&reject" "$HUB_SAS" || die "C2D reject failed"
check "C2D reject: status" "$H_STATUS" 204
hub_call GET "$DB?api-version=$HUB_API" "$HUB_SAS" || die "C2D receive failed"
check "C2D receive after reject: nothing (dead-lettered, not redelivered)" "$H_STATUS" 204

say "== C2D: two queued messages purged with DELETE /devices/$REGID/commands"
for m in c2d-3 c2d-4; do
	hub_call POST "$DB?api-version=$HUB_API" "$SVC_SAS" -H "iothub-messageid: $m" --data-binary "$m" || die "C2D send failed"
	check "C2D send $m: status" "$H_STATUS" 200
done
hub_call GET "/twins/$REGID?api-version=$HUB_API" "$SVC_SAS" || die "twin GET failed"
check "GET twin: cloudToDeviceMessageCount" "$(jqr .cloudToDeviceMessageCount "$H_BODY")" 2
hub_call DELETE "/devices/$REGID/commands?api-version=$HUB_API" "$SVC_SAS" || die "purge failed"
check "purge: status" "$H_STATUS" 200
check "purge: body" "$(jq -c . <<<"$H_BODY" 2>/dev/null || printf "<not JSON: %s>" "$H_BODY")" "{\"totalMessagesPurged\":2,\"deviceId\":\"$REGID\",\"moduleId\":null}"
hub_call GET "$DB?api-version=$HUB_API" "$HUB_SAS" || die "C2D receive failed"
check "C2D receive after purge: status" "$H_STATUS" 204
