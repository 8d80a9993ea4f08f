#!/bin/sh
# Replay a provider switching SMTP-after-POP off at midnight, without waiting for midnight.
#
# Starts its own `mailhost serve` on free loopback ports with the clock at 23:59 on
# 2013-09-01 and SMTP-after-POP on until 2013-09-02, logs in to POP3 from 127.0.0.2,
# relays from there (allowed), moves the server clock two minutes on through the HTTP
# API, and relays again (refused, with the reason). Needs curl; uses swaks if installed,
# else Python's smtplib (SWAKS= forces that). Run from a checkout with mailhost installed:
#
#   sh examples/cutover.sh
set -eu

HOST=127.0.0.1
CAFE=127.0.0.2
MAILHOST=${MAILHOST:-mailhost}
PYTHON=${PYTHON:-python3}
SWAKS=${SWAKS-swaks}

dir=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; fi
  rm -rf "$dir"
}
trap cleanup EXIT

"$MAILHOST" serve --data "$dir/data" --demo-accounts \
  --now 2013-09-01T23:59:00Z --smtp-after-pop until:2013-09-02 \
  --smtp-port 0 --submission-port 0 --pop3-port 0 --smtps-port 0 --pop3s-port 0 \
  --http-port 0 --ready-file "$dir/ready.json" >/dev/null 2>"$dir/serve.log" &
pid=$!

tries=0
until [ -s "$dir/ready.json" ]; do  # at most 30 s
  tries=$((tries + 1))
  if [ "$tries" -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then
    echo "mailhost did not start:" >&2
    cat "$dir/serve.log" >&2
    exit 1
  fi
  sleep 0.1
done
port() { sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p" "$dir/ready.json"; }
SMTP=$(port smtp)
POP3=$(port pop3)
API=http://$HOST:$(port http)/api

api() { curl -sS --max-time 10 -w '\n' "$@"; }

relay() {  # print the server's reply to RCPT for an outside address, sent from the café
  if [ -n "$SWAKS" ] && command -v "$SWAKS" >/dev/null 2>&1; then
    "$SWAKS" --server "$HOST:$SMTP" --local-interface "$CAFE" --timeout 10 \
      --from anyone@spam.example --to friend@elsewhere.example --quit-after RCPT 2>&1 |
      awk '/-> RCPT/ { getline; sub(/^<[-~*]* +/, "RCPT: "); print }'
  else
    "$PYTHON" -c 'import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), source_address=(sys.argv[3], 0), timeout=10)
s.ehlo(); s.mail("anyone@spam.example"); code, text = s.rcpt("friend@elsewhere.example")
print("RCPT:", code, text.decode()); s.quit()' "$HOST" "$SMTP" "$CAFE"
  fi
}

echo "clock:  $(api "$API/clock")"
echo "POP3 login as alice from $CAFE:"
curl -sS --max-time 10 --interface "$CAFE" --user alice@example.org:alice-secret \
  "pop3://$HOST:$POP3/" >/dev/null && echo "POP3: logged in"
echo "before the cutover, anyone at $CAFE may relay:"
relay
echo "clock:  $(api -X POST "$API/clock/advance" -H 'Content-Type: application/json' -d '{"seconds": 120}')"
echo "after the cutover, the same address is refused:"
relay

kill "$pid"  # SIGTERM: a clean shutdown
wait "$pid" || true
pid=
echo "stopped mailhost"
