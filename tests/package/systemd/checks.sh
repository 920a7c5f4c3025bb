#!/bin/bash
# The checks of tests/package/systemd.rs, run inside a booted minimal Debian by the
# one-shot unit wwep-checks.service, as root. It installs the package, drives
# the service through systemctl and dpkg as an operator does, and writes one
# line per check to /wwep-test/out/results:
#
#   ok NAME detail        or        FAIL NAME detail
#
# then `end` once it got through. The test on the host reads that file; a check
# that is missing counts as failed. The unit powers the container off when this
# script exits, whatever happened.
#
# /wwep-test/in holds what the host prepared: wwep.deb, wwep-upgrade.deb (the
# same files with a higher version), certificates first/second/expired
# (.pem/.key), a data file registers.wwep with PRELOAD records, and settings.
set -u
in=/wwep-test/in
out=/wwep-test/out
results=$out/results
: >"$results"
exec >"$out/checks.log" 2>&1
# shellcheck source=/dev/null
. "$in/settings" # PRELOAD, UPGRADE_VERSION
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

trap 'journalctl -u wwep --no-pager -o short-monotonic >"$out/journal.txt" 2>&1' EXIT

say() { echo "[$SECONDS s] $*"; }
ok() {
  say "ok $*"
  echo "ok $*" >>"$results"
}
fail() {
  say "FAIL $*"
  echo "FAIL $*" >>"$results"
}
# check NAME COMMAND...: runs COMMAND, whose output is the detail of the line.
check() {
  local name=$1 detail
  shift
  if detail=$("$@" 2>&1); then
    ok "$name ${detail//$'\n'/; }"
  else
    fail "$name ${detail//$'\n'/; }"
    return 1
  fi
}
# within SECONDS COMMAND...: polls COMMAND until it succeeds or time is up
# (COMMAND's arguments are expanded once: put what changes in a function).
within() {
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}
prop() { systemctl show -p "$1" --value wwep; }
main_pid() { prop MainPID; }

client() { wwep --server 127.0.0.1 --timeout-ms 3000 "$@"; }
# --insecure: the certificate changes under reload; served_fingerprint checks it.
tls_client() { wwep --server 127.0.0.1 --tls --insecure --timeout-ms 3000 "$@" 2> >(grep -v -- --insecure >&2); }
fingerprint() { openssl x509 -noout -fingerprint -sha256 -in "$1" | cut -d= -f2; }
served_fingerprint() {
  timeout 5 openssl s_client -connect 127.0.0.1:40508 -servername localhost </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 | cut -d= -f2
}
serves() { [ "$(served_fingerprint)" = "$1" ]; }
# A register of the preloaded data file: record i is device i/256, register
# i%256, value i%65536.
preloaded() {
  local i=$1
  printf 'A%04X%02X%04X' $((i >> 8)) $((i & 255)) $((i & 65535))
}
read_preloaded() {
  local i=$1
  client read "$(printf %04X $((i >> 8)))" "$(printf %02X $((i & 255)))"
}
put_cert() {
  install -m 0644 -o root -g root "$in/$1.pem" /etc/wwep/server.pem
  install -m 0640 -o root -g wwep "$in/$1.key" /etc/wwep/server.key
}
wwep_lines() { journalctl -u wwep --no-pager -o cat | grep -c "$1"; }

say "booted; $(systemctl --version | head -1)"

# --- install -------------------------------------------------------------------
install_pkg() {
  local state enabled
  dpkg -i "$in/wwep.deb" >"$out/dpkg.log" 2>&1 || {
    tail -5 "$out/dpkg.log"
    return 1
  }
  state=$(systemctl is-active wwep)
  enabled=$(systemctl is-enabled wwep)
  echo "after install: $state, $enabled"
  [ "$state" = inactive ] && [ "$enabled" = disabled ]
}
check install install_pkg || exit 0

# --- start: Type=notify ----------------------------------------------------------
# The data file takes a while to replay; systemctl must not return before the
# server listens, so both ports answer the first try, with no retry.
put_cert first
install -m 0600 -o wwep -g wwep "$in/registers.wwep" /var/lib/wwep/registers.wwep
start=$(date +%s%N)
systemctl enable --now wwep
started=$?
took=$((($(date +%s%N) - start) / 1000000))
plain_reply=$(client read 0001 02)
tls_reply=$(tls_client read "$(printf %04X $(((PRELOAD - 1) >> 8)))" "$(printf %02X $(((PRELOAD - 1) & 255)))")
state=$(systemctl is-active wwep)
if [ "$started" = 0 ] && [ "$state" = active ] && [ "$plain_reply" = "$(preloaded 258)" ]; then
  ok "notify-ready enable --now returned after ${took} ms (replay of $PRELOAD records) and the open port answered at once: $plain_reply"
else
  fail "notify-ready enable --now: status $started, $state; the open port's first answer: '$plain_reply'"
fi
if [ "$tls_reply" = "$(preloaded $((PRELOAD - 1)))" ]; then
  ok "tls-port answered at once: $tls_reply"
else
  fail "tls-port first answer: '$tls_reply', expected $(preloaded $((PRELOAD - 1)))"
fi
within 10 serves "$(fingerprint "$in/first.pem")" || fail "first-certificate not served: '$(served_fingerprint)'"

# --- the unit's system-call filter lets the accept threads lower their claim ----
# Both hand every connection on (with a data file, even the open port's), so
# each makes itself a batch thread (SCHED_BATCH, policy 3 in /proc's stat);
# a filter that refused the call would kill the server.
accept_threads_batch() {
  local pid task name policy found=0
  pid=$(systemctl show -p MainPID --value wwep)
  for task in /proc/"$pid"/task/*; do
    name=$(cat "$task/comm")
    case $name in wwep-accept-*) ;; *) continue ;; esac
    # Field 41 of stat; the fields after the name start at the third.
    policy=$(sed 's/.*) //' "$task/stat" | awk '{print $39}')
    echo "$name: policy $policy"
    [ "$policy" = 3 ] || return 1
    found=$((found + 1))
  done
  [ "$found" = 2 ]
}
check accept-threads-batch accept_threads_batch

# --- reload ----------------------------------------------------------------------
reload_rotated() {
  put_cert second
  systemctl reload wwep || {
    systemctl status wwep --no-pager -n 5
    return 1
  }
  within 10 serves "$(fingerprint "$in/second.pem")" || {
    echo "still serves $(served_fingerprint)"
    return 1
  }
  echo "a TLS client sees the second certificate"
}
check reload-rotated reload_rotated

reload_expired() {
  local refusals
  refusals=$(wwep_lines 'keeping the old certificate')
  put_cert expired
  systemctl reload wwep || {
    systemctl status wwep --no-pager -n 5
    return 1
  }
  refused_more() { [ "$(wwep_lines 'keeping the old certificate')" -gt "$refusals" ]; }
  within 10 refused_more || {
    echo "no 'keeping the old certificate' in the journal"
    return 1
  }
  serves "$(fingerprint "$in/second.pem")" || {
    echo "serves $(served_fingerprint), not the second certificate"
    return 1
  }
  [ "$(systemctl is-active wwep)" = active ] || return 1
  journalctl -u wwep --no-pager -o cat | grep 'keeping the old certificate' | tail -1
}
check reload-expired-kept reload_expired
put_cert second

# --- kill -9 -----------------------------------------------------------------------
kill9() {
  local pid reply r
  for r in 01 02 03; do
    reply=$(client write F0F0 "$r" "00$r")
    [ "$reply" = "AF0F0${r}00$r" ] || {
      echo "write $r: $reply"
      return 1
    }
  done
  reply=$(tls_client write F0F0 04 0004)
  [ "$reply" = AF0F0040004 ] || {
    echo "tls write: $reply"
    return 1
  }
  pid=$(main_pid)
  kill -9 "$pid"
  restarted() { [ "$(prop NRestarts)" = 1 ] && [ "$(systemctl is-active wwep)" = active ] && [ "$(main_pid)" != "$pid" ]; }
  within 30 restarted || {
    echo "after kill -9 of $pid: NRestarts=$(prop NRestarts), $(systemctl is-active wwep)"
    return 1
  }
  for r in 01 02 03 04; do
    reply=$(client read F0F0 "$r")
    [ "$reply" = "AF0F0${r}00$r" ] || {
      echo "after the restart, register $r: '$reply'"
      return 1
    }
  done
  reply=$(read_preloaded 4242)
  [ "$reply" = "$(preloaded 4242)" ] || {
    echo "after the restart, preloaded register: '$reply'"
    return 1
  }
  echo "main PID $pid killed, restarted as $(main_pid) (NRestarts=1), the 4 acknowledged writes and the data file are there"
}
check kill9-restart-data-kept kill9

# --- stop under load -----------------------------------------------------------------
loads=$out/load
mkdir -p "$loads"
load() {
  # Writes device F1nn registers 00, 01, ... with their own number as value
  # until told to stop; one line per attempt: the register, the client's
  # exit status, the reply or the error.
  local n=$1 tls=$2 r=0 reply status
  while [ ! -e "$loads/stop" ] && [ "$r" -lt 250 ]; do
    if [ "$tls" = 1 ]; then
      reply=$(tls_client write "F1$n" "$(printf %02X $r)" "$(printf %04X $r)" 2>&1)
    else
      reply=$(client write "F1$n" "$(printf %02X $r)" "$(printf %04X $r)" 2>&1)
    fi
    status=$?
    echo "$(printf %02X $r) $status ${reply//$'\n'/ }" >>"$loads/$n"
    r=$((r + 1))
  done
}
# The connections the server holds: its sockets that are established on one
# of its ports (/proc/net/tcp: local port 6C3C = 27708, 9E3C = 40508; state 01).
accepted() {
  local inodes
  inodes=$(find "/proc/$1/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n')
  awk -v inodes="$inodes" 'BEGIN { n = split(inodes, list, "\n"); for (i = 1; i <= n; i++) held[list[i]] = 1 }
    $4 == "01" && ($2 ~ /:6C3C$/ || $2 ~ /:9E3C$/) && ($10 in held) { count++ }
    END { print count + 0 }' /proc/net/tcp /proc/net/tcp6
}
stop_under_load() {
  local pid n fd reply begin took limit status
  pid=$(main_pid)
  # Four connections that send nothing, accepted before the stop.
  exec 3<>/dev/tcp/127.0.0.1/27708 4<>/dev/tcp/127.0.0.1/27708 5<>/dev/tcp/127.0.0.1/40508 6<>/dev/tcp/127.0.0.1/40508
  all_accepted() { [ "$(accepted "$pid")" -ge 4 ]; }
  within 5 all_accepted || {
    echo "the server holds $(accepted "$pid") connections, not 4"
    return 1
  }
  # Four clients writing one connection at a time, two of them over TLS.
  for n in 01 02 03 04; do
    load "$n" $((10#$n % 2)) &
  done
  for n in 01 02 03 04; do
    within 20 grep -q '^.. 0 A' "$loads/$n" || {
      echo "load $n got no A"
      return 1
    }
  done
  begin=$(date +%s%N)
  systemctl stop wwep
  status=$?
  took=$((($(date +%s%N) - begin) / 1000000))
  touch "$loads/stop"
  wait
  limit=$(($(prop TimeoutStopUSec | sed -n 's/^\([0-9]*\)s$/\1/p') * 1000))
  for fd in 3 4; do
    reply=
    IFS= read -r -t 5 -d '' reply <&"$fd"
    [ "${reply:0:1}" = X ] || {
      echo "a connection that sent nothing got '$reply', not X"
      return 1
    }
  done
  # A TLS connection that sent nothing cannot be given an X: it is closed.
  for fd in 5 6; do
    IFS= read -r -t 5 -d '' reply <&"$fd"
    [ $? -lt 128 ] || {
      echo "an idle TLS connection was neither answered nor closed within 5 s"
      return 1
    }
  done
  exec 3<&- 4<&- 5<&- 6<&-
  [ "$status" = 0 ] || {
    echo "systemctl stop: status $status"
    return 1
  }
  [ "$limit" -gt 0 ] && [ "$took" -lt "$limit" ] || {
    echo "stop took $took ms, TimeoutStopSec is $limit ms"
    return 1
  }
  [ "$(prop Result)" = success ] && [ "$(prop ExecMainCode)" = 1 ] && [ "$(prop ExecMainStatus)" = 0 ] || {
    echo "stopped with Result=$(prop Result) ExecMainCode=$(prop ExecMainCode) ExecMainStatus=$(prop ExecMainStatus)"
    return 1
  }
  echo "stopped in $took ms (limit $limit ms) with exit status 0 amid $(cat "$loads"/0? | wc -l) writes; the idle connections got X (open port) or a close (TLS port)"
}
check stop-under-load stop_under_load

# Every write acknowledged during the load is there after a start.
acknowledged_kept() {
  local n reg status line reply acked=0 refused=0 other=0
  systemctl start wwep || return 1
  for n in 01 02 03 04; do
    while read -r reg status line; do
      if [ "$status" = 0 ]; then
        reply=$(client read "F1$n" "$reg")
        [ "$reply" = "$line" ] || {
          echo "F1$n/$reg was acknowledged as $line, reads '$reply'"
          return 1
        }
        acked=$((acked + 1))
      elif [[ $line == *refused* ]]; then
        refused=$((refused + 1))
      else
        other=$((other + 1))
        echo "not acknowledged: F1$n/$reg: $line"
      fi
    done <"$loads/$n"
  done
  [ "$acked" -ge 4 ] || {
    echo "only $acked writes were acknowledged under the load"
    return 1
  }
  echo "$acked acknowledged writes read back; after the stop $refused refused, $other other"
}
check stop-acknowledged-kept acknowledged_kept

# --- journal, hardening ----------------------------------------------------------------
journal_transactions() {
  local lines
  lines=$(journalctl -u wwep --no-pager -o cat | grep -c 'F0F0')
  [ "$lines" -ge 8 ] || {
    echo "$lines journal lines mention device F0F0 (4 writes, 4 reads)"
    return 1
  }
  journalctl -u wwep --no-pager -o cat | grep 'WF0F00' | head -1
}
check journal-transactions journal_transactions

security() {
  local report exposure
  report=$(systemd-analyze security wwep --no-pager 2>&1)
  exposure=$(sed -n 's/.*Overall exposure level for wwep.service: \([0-9.]*\).*/\1/p' <<<"$report")
  [ -n "$exposure" ] || {
    echo "$report" | tail -3
    return 1
  }
  echo "exposure $exposure"
  awk -v e="$exposure" 'BEGIN { exit !(e <= 1.5) }' || return 1
  # And in force: the running server has the filter, no capabilities, no way
  # to gain privileges, and runs as wwep.
  local status
  status=$(cat "/proc/$(main_pid)/status")
  for want in 'Seccomp:\s*2' 'NoNewPrivs:\s*1' 'CapEff:\s*0+$' 'CapBnd:\s*0+$' "Uid:\\s*$(id -u wwep)\\s"; do
    grep -Eq "^$want" <<<"$status" || {
      echo "the server's /proc status lacks $want: $(grep -E '^(Uid|Seccomp|NoNewPrivs|CapEff|CapBnd):' <<<"$status" | tr '\n' ' ')"
      return 1
    }
  done
  echo "the server runs as wwep with Seccomp 2, NoNewPrivs 1, no capabilities"
}
check security-exposure security

# --- upgrade ---------------------------------------------------------------------------
upgrade() {
  local pid new version
  pid=$(main_pid)
  client write F2F2 01 4321 | grep -qx AF2F2014321 || return 1
  dpkg -i "$in/wwep-upgrade.deb" >>"$out/dpkg.log" 2>&1 || {
    tail -5 "$out/dpkg.log"
    return 1
  }
  version=$(dpkg-query -W -f='${Version}' wwep)
  [ "$version" = "$UPGRADE_VERSION" ] || {
    echo "installed version $version"
    return 1
  }
  within 30 systemctl is-active --quiet wwep || return 1
  new=$(main_pid)
  [ "$new" != "$pid" ] || {
    echo "still the old server ($pid)"
    return 1
  }
  case $(readlink "/proc/$new/exe") in
    *deleted*) echo "the new server runs a deleted binary"; return 1 ;;
  esac
  [ "$(client read F2F2 01)" = AF2F2014321 ] && [ "$(read_preloaded 99)" = "$(preloaded 99)" ] || {
    echo "the data did not survive the upgrade"
    return 1
  }
  echo "upgraded to $version: server $pid replaced by $new, registers kept"
}
check upgrade-restarts-keeps-data upgrade

# --- purge -----------------------------------------------------------------------------
purge() {
  local files path left=
  files=$(dpkg-query -L wwep | while read -r path; do [ -f "$path" ] && echo "$path"; done)
  # The certificate and key are the administrator's: the purge would keep them.
  rm -f /etc/wwep/server.pem /etc/wwep/server.key
  dpkg --purge wwep >>"$out/dpkg.log" 2>&1 || {
    tail -5 "$out/dpkg.log"
    return 1
  }
  for path in $files /etc/wwep /var/lib/wwep /etc/systemd/system/multi-user.target.wants/wwep.service; do
    [ ! -e "$path" ] || left="$left $path"
  done
  getent passwd wwep >/dev/null && left="$left user:wwep"
  getent group wwep >/dev/null && left="$left group:wwep"
  dpkg-query -W wwep >/dev/null 2>&1 && left="$left dpkg:wwep"
  [ "$(systemctl is-active wwep)" = active ] && left="$left running"
  systemctl list-unit-files wwep.service --no-legend | grep -q wwep && left="$left unit"
  [ -z "$left" ] || {
    echo "left after the purge:$left"
    return 1
  }
  echo "nothing left"
}
check purge-leaves-nothing purge

echo end >>"$results"
say end
