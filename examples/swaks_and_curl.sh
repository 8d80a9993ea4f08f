#!/bin/sh
# One-liners against a running mailhost with swaks and curl.
#
#   sh examples/swaks_and_curl.sh              # every step below, in order
#   sh examples/swaks_and_curl.sh pop3s_list   # just one (or a few) of them
#
# Ports: MAILHOST_SMTP_PORT, MAILHOST_SUBMISSION_PORT, MAILHOST_SMTPS_PORT, MAILHOST_POP3S_PORT,
# MAILHOST_HTTP_PORT (default: the `make run` ports). MAILHOST_CA is the CA to trust
# (default: mailhost-data/tls/ca.pem, where `make run` puts it). A step whose client
# is not installed says so and is skipped.
set -eu

HOST=127.0.0.1
SMTP=${MAILHOST_SMTP_PORT:-2525}
SUBMISSION=${MAILHOST_SUBMISSION_PORT:-2587}
SMTPS=${MAILHOST_SMTPS_PORT:-2465}
POP3S=${MAILHOST_POP3S_PORT:-2995}
API=http://$HOST:${MAILHOST_HTTP_PORT:-8025}/api
CA=${MAILHOST_CA:-mailhost-data/tls/ca.pem}

# Mail for a local account: accepted from anyone on the SMTP (MX) port.
swaks_local() {
  swaks --server "$HOST:$SMTP" --from app@example.net --to alice@example.org \
    --header "Subject: swaks local delivery"
}

# Relay with SMTP-Auth: STARTTLS on submission, verifying the server against ca.pem.
swaks_submission() {
  swaks --server "$HOST:$SUBMISSION" --tls --tls-verify --tls-ca-path "$CA" \
    --auth PLAIN --auth-user bob@example.org --auth-password bob-secret \
    --from bob@example.org --to friend@elsewhere.example --header "Subject: swaks submission"
}

# Send over implicit TLS (smtps), with AUTH; the message comes from standard input.
curl_smtps() {
  printf 'From: alice@example.org\r\nTo: bob@example.org\r\nSubject: curl smtps\r\n\r\nhi\r\n' |
    curl -sS --cacert "$CA" --user alice@example.org:alice-secret \
      --mail-from alice@example.org --mail-rcpt bob@example.org -T - -w 'smtps reply: %{response_code}\n' "smtps://$HOST:$SMTPS"
}

# List bob's mailbox over pop3s: one "number size" line per message.
curl_pop3s() {
  curl -sS --cacert "$CA" --user bob@example.org:bob-secret "pop3s://$HOST:$POP3S/"
}

# Relayed mail is kept, not sent on: the outbox, as JSON.
curl_outbox() {
  curl -sS -w '\n' "$API/outbox/messages"
}

[ $# -gt 0 ] || set -- swaks_local swaks_submission curl_smtps curl_pop3s curl_outbox
for step in "$@"; do
  client=${step%%_*}
  echo "== $step"
  if command -v "$client" >/dev/null 2>&1; then
    "$step"
  else
    echo "skipped: $client is not installed"
  fi
done
