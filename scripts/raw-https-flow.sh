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
# a wrong key gets 401 with errorCode 401002. Exits non-zero on any mismatch.
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
	out=${out//$'\r'/}
	H_HEADERS=${out%%$'\n\n'*}
	H_BODY=${out#*$'\n\n'}
	[[ $H_BODY == "$out" ]] && H_BODY=
	H_STATUS=$(head -n 1 <<<"$H_HEADERS" | awk '{print $2}')
	say "  <- $(head -n 1 <<<"$H_HEADERS") $H_BODY"
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
