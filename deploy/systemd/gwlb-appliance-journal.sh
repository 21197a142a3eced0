#!/usr/bin/env bash
# Copies the journal of gwlb-appliance.service to a file, one JSON object per line, for the
# CloudWatch agent, which reads files and not the journal. gwlb-appliance-journal.service runs it;
# provision.sh installs it as /usr/libexec/gwlb-appliance/journal-to-file.
#
#   journal-to-file [LOG]          # default LOG: /var/log/gwlb-appliance/journal.log
#
# Why the file is its own cursor: journalctl's JSON gives every entry its __CURSOR, so each start
# (a restart, a reboot, a start after logrotate emptied LOG) resumes right after the last entry
# LOG holds, or LOG.1 when LOG is empty: nothing is copied twice and nothing is skipped.
# journalctl's --cursor-file cannot do this with --follow on Amazon Linux 2023's systemd 252: it
# writes the cursor only when journalctl ends by itself, which a follow never does (a stop kills
# it). The very first start copies the unit's entries of the current boot from its beginning.
set -euo pipefail

LOG=${1:-/var/log/gwlb-appliance/journal.log}
UNIT=gwlb-appliance.service
# What an operator reads; journalctl adds __CURSOR, __REALTIME_TIMESTAMP, __MONOTONIC_TIMESTAMP
# and _BOOT_ID to every entry itself. -u also takes systemd's own lines about the unit (started,
# main process killed, ...), whose SYSLOG_IDENTIFIER is systemd.
FIELDS=MESSAGE,PRIORITY,SYSLOG_IDENTIFIER,_PID,_COMM

# The cursor of the last entry LOG holds, or LOG.1 when LOG is empty; nothing when neither does.
last_cursor() {
  local file found
  for file in "$LOG" "$LOG.1"; do
    [[ -s $file ]] || continue
    # From the end: the first line that has one (a line cut short by a kill may not; cut short
    # without its newline, tac runs it into the line before, whose cursor comes second).
    found=$(tac -- "$file" | grep -m 1 -o '"__CURSOR":"[^"]*"' | head -n 1 || true)
    found=${found#\"__CURSOR\":\"}
    printf '%s\n' "${found%\"}"
    return
  done
}

# A line cut short by a kill would otherwise run into the next entry's.
end_last_line() {
  if [[ -s $LOG && -n $(tail -c 1 -- "$LOG") ]]; then
    printf '\n' >>"$LOG"
  fi
}

main() {
  local cursor where
  cursor=$(last_cursor)
  if [[ -n $cursor ]]; then
    where=(--after-cursor="$cursor")
  else
    where=(--boot --lines=all)
  fi
  end_last_line
  # --quiet: no "-- Journal begins at ... --" or "-- Boot ... --" lines among the JSON.
  exec journalctl --follow --quiet --no-pager --unit="$UNIT" --output=json \
    --output-fields="$FIELDS" "${where[@]}" >>"$LOG"
}

main
