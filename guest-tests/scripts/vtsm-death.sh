# A TSM that stops answering, then one that dies, in the middle of connect:
# each connect must fail with an errno in bounded time, never hang, and the
# module must unload cleanly.  The host prepends EP and MB.
up() { cut -d' ' -f1 /proc/uptime; }
connect() {
	t0=$(up)
	msg=$( { echo tsm0 > $E/tsm/connect; } 2>&1 )
	rc=$?
	r "$1" "$rc ${msg:-ok}"
	r "$1_seconds" "$(echo "$t0 $(up)" | awk '{printf "%.1f", $2 - $1}')"
}

insmod /modules/vtsm.ko step_timeout_ms=2000 && r insmod ok
# Scripted: the first request is held back 4 s (> the 2 s step timeout).
connect connect_slow
r authenticated_slow "$(cat $E/authenticated 2>/dev/null | tr -d '\n')"
# Scripted: one exchange, then a held-back request; the host kills the server.
connect connect_dead
r authenticated_dead "$(cat $E/authenticated 2>/dev/null | tr -d '\n')"
rmmod vtsm && r rmmod ok
