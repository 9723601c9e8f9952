#!/usr/bin/env bash
# Instructions per request (issue 5), a figure that does not move with the machine's load the
# way bench/proxy.sh's requests/s do: Berth's router (bench/proxy's bench-proxy, profiling
# build) and nginx as a reverse proxy (one worker, no master, upstream keep-alive and the
# router's forwarding headers, otherwise bench/proxy.sh's configuration; NGINX_HEADERS=none
# for none of those headers) each run under valgrind's callgrind in front of the same
# nginx backend answering "hello\n", driven by `wrk -t1 -c8` on loopback for DURATION s.
# Prints the user-space instructions (callgrind's Ir) each proxy executed per request, counted
# from just before wrk starts (callgrind_control zeroes the counts, so that start-up is left
# out) to its exit, and the Berth/nginx ratio. With 8 connections, runs of one build still
# differ by about 1% (how many requests each wake-up finds ready depends on timing); with
# CONNECTIONS=1 every request takes the same path and runs agree within about 0.5%, the
# setting for comparing builds.
# Two runs of DURATION s plus start-up, about half a minute with the defaults.
#
#   bench/proxy-instructions.sh              DURATION=8 CONNECTIONS=8 can be set
#   bench/proxy-instructions.sh BIN...       measures these bench-proxy builds (e.g. copies
#                                            of earlier ones) instead of building one
#   NGINX=0 bench/proxy-instructions.sh ...  leaves nginx out
#
# The callgrind profiles are kept in target/bench-proxy/callgrind.NAME.out, for
# `callgrind_annotate --inclusive=yes` or `--tree=caller`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
duration=${DURATION:-8}
connections=${CONNECTIONS:-8}

need=()
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || need+=(valgrind)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "proxy-instructions: missing ${need[*]} (apt-get install -y ${need[*]})" >&2
  exit 1
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)

if [ $# -eq 0 ]; then
  cargo build --quiet --profile profiling --manifest-path bench/proxy/Cargo.toml \
    --target-dir target
  set -- "$PWD/target/profiling/bench-proxy"
fi
for bin in "$@"; do
  [ -x "$bin" ] || { echo "proxy-instructions: $bin is not an executable" >&2; exit 1; }
done
mkdir -p target/bench-proxy
profiles=$PWD/target/bench-proxy

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-proxy-instructions.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start-up under valgrind is slow.
me=proxy-instructions ready_timeout=60
# shellcheck source=bench/nginx-common.sh
. bench/nginx-common.sh

# Runs `command...` under callgrind in a background job, recording into
# target/bench-proxy/callgrind.NAME.out.
start_callgrind() {
  local name=$1
  shift
  valgrind --tool=callgrind --callgrind-out-file="$profiles/callgrind.$name.out" "$@" \
    >"$work/$name.port" 2>"$work/$name.err" &
  pids+=($!)
}

# Drives the proxy `name` (the process `pid`, listening on `port`) with wrk, asks it to stop
# with `signal` (valgrind writes the profile as it exits) and waits for it; then records its
# requests and instructions.
measure() {
  local name=$1 pid=$2 port=$3 signal=$4 errors total
  echo "==> $name: wrk -t1 -c$connections -d${duration}s under callgrind" >&2
  callgrind_control --zero "$pid" >/dev/null
  wrk -t1 -c"$connections" -d"${duration}s" "http://127.0.0.1:$port/" >"$work/$name.wrk"
  errors=$(grep -e 'Socket errors' -e 'Non-2xx' "$work/$name.wrk" | xargs || true)
  [ -z "$errors" ] || echo "warning: $name: $errors" >&2
  kill "-$signal" "$pid"
  wait "$pid" 2>/dev/null || true
  forget "$pid"
  requests[$name]=$(awk '/ requests in / { print $1 }' "$work/$name.wrk")
  total=$(awk '$1 == "summary:" || $1 == "totals:" { print $2; exit }' \
    "$profiles/callgrind.$name.out" 2>/dev/null)
  if [ -z "${requests[$name]}" ] || [ "${requests[$name]}" = 0 ] || [ -z "$total" ]; then
    echo "proxy-instructions: no figure for $name" >&2
    cat "$work/$name.wrk" "$work/$name.err" >&2
    exit 1
  fi
  instructions[$name]=$total
  names+=("$name")
}

# Takes an ended process off the list that cleanup kills, whose pid could be reused.
forget() {
  local pid kept=()
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}

names=()
declare -A requests instructions

# 1. The backend, not under valgrind.
start_backend

# 2. Each Berth build, which prints its port once it listens.
n=0
for bin in "$@"; do
  n=$((n + 1))
  name=berth
  [ $# -gt 1 ] && name=berth-$n
  start_callgrind "$name" "$bin" "127.0.0.1:$backend_port"
  pid=${pids[-1]} deadline=$((SECONDS + 60))
  until [ -s "$work/$name.port" ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/$name.err" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || {
      echo "proxy-instructions: $bin printed no port in 60 s" >&2
      exit 1
    }
    sleep 0.2
  done
  port=$(head -n1 "$work/$name.port")
  wait_ready "$name" "$pid" "http://127.0.0.1:$port/"
  measure "$name" "$pid" "$port" TERM
  echo "$name: $bin" >&2
done

# 3. nginx as the reverse proxy, as in bench/proxy.sh but in one process (no master), so that
# callgrind sees all of its work. It stops gracefully on SIGQUIT.
if [ "${NGINX:-1}" != 0 ]; then
  nginx_port=$(free_port)
  nginx_config nginx "worker_processes 1;
master_process off;
events { worker_connections 4096; }
$(proxy_http nginx "$backend_port" "$nginx_port")"
  start_callgrind nginx "$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" \
    -e "$work/nginx/error.log" -g 'daemon off;'
  wait_ready nginx "${pids[-1]}" "http://127.0.0.1:$nginx_port/"
  measure nginx "${pids[-1]}" "$nginx_port" QUIT
fi

echo
echo "user-space instructions per request under callgrind, wrk -t1 -c$connections" \
  "-d${duration}s on loopback; valgrind $(valgrind --version | sed 's/valgrind-//')," \
  "nginx $("$nginx" -v 2>&1 | sed 's/.*nginx\///') (forwarding headers: ${NGINX_HEADERS:-same} as" \
  "Berth)"
printf '%-8s %10s %16s %12s %12s\n' target requests instructions instr/req berth/nginx
for name in "${names[@]}"; do
  per_request=$((instructions[$name] / requests[$name]))
  ratio=-
  if [ -n "${instructions[nginx]:-}" ] && [ "$name" != nginx ]; then
    ratio=$(awk -v a="${instructions[$name]}" -v an="${requests[$name]}" \
      -v b="${instructions[nginx]}" -v bn="${requests[nginx]}" \
      'BEGIN { printf "%.2f", (a / an) / (b / bn) }')
  fi
  printf '%-8s %10s %16s %12s %12s\n' "$name" "${requests[$name]}" "${instructions[$name]}" \
    "$per_request" "$ratio"
done
