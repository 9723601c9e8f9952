#!/usr/bin/env bash
# Proxy figures (issue 5): requests/s, p50/p99/p99.9 latency and CPU per request with wrk at 1
# and 64 connections against a fast backend directly, through nginx (Debian's, upstream
# keep-alive) and through Berth's router, in one run, with Berth/nginx ratios and each
# proxy's cost over direct.
# Berth here is the router alone (bench/proxy: berth_router::serve with one route, one
# single-threaded runtime per core as in the daemon), not a whole `berth daemon`. nginx
# does the same work to each request as the router (the visitor's Host, X-Forwarded-*,
# Forwarded, a request id both ways; see proxy_http in nginx-common.sh). Loopback only;
# every wrk run has a fixed duration: ROUNDS rounds of (WARMUP + DURATION) s per target and
# connection count, 3.5 minutes with the defaults and 70 s more for each target that
# CONTROL or MULTI_THREAD adds. Latency percentiles are of all the requests of all the
# rounds (wrk prints its histogram through bench/latency-histogram.lua).
#
#   bench/proxy.sh            ROUNDS=5 WARMUP=2 DURATION=5 CONNS="1 64" can be set in the
#                             environment (CONNS: the wrk connection counts, in order)
#   NGINX_HEADERS=none bench/proxy.sh  nginx only proxies, setting none of those headers
#   NGINX_AFFINITY=auto bench/proxy.sh  keeps each nginx worker on a CPU of its own, as the
#                             router keeps its runtimes (not Debian's default, nor piku's)
#   PERF=1 bench/proxy.sh     then also records the router under 64 connections with perf
#   MULTI_THREAD=1 bench/proxy.sh  adds `berth-mt`: the router on one multi-threaded runtime
#                             (bench-proxy --multi-thread), an experiment, not how Berth runs
#   CONTROL=1 bench/proxy.sh  adds `nginx-b`, a second nginx configured like the first, and
#                             its ratios to nginx: an A/A test, which shows how far two
#                             identical proxies' figures differ on this machine
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
duration=${DURATION:-5}
warmup=${WARMUP:-2}
rounds=${ROUNDS:-5}
read -r -a conns_list <<<"${CONNS:-1 64}"

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ "${PERF:-0}" = 1 ]; then command -v perf >/dev/null || need+=(linux-perf); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "proxy: missing ${need[*]} (apt-get install -y ${need[*]})" >&2
  exit 1
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)

profile=release
[ "${PERF:-0}" = 1 ] && profile=profiling
cargo build --quiet --profile "$profile" --manifest-path bench/proxy/Cargo.toml --target-dir target
bench_proxy=$PWD/target/$profile/bench-proxy

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-proxy.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in ${perf_pid:-} "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in ${perf_pid:-} "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

me=proxy ready_timeout=10
# shellcheck source=bench/nginx-common.sh
. bench/nginx-common.sh

load_before=$(cut -d' ' -f1 /proc/loadavg)

# 1. The backend.
start_backend

# 2. nginx as the reverse proxy, with keep-alive connections to the backend.
# Starts the nginx proxy NAME on PORT.
start_nginx_proxy() {
  local name=$1 port=$2
  nginx_config "$name" "worker_processes auto;
${NGINX_AFFINITY:+worker_cpu_affinity $NGINX_AFFINITY;}
events { worker_connections 4096; }
$(proxy_http "$name" "$backend_port" "$port")"
  run_nginx "$name"
  wait_ready "$name" "${pids[-1]}" "http://127.0.0.1:$port/"
}
nginx_port=$(free_port)
start_nginx_proxy nginx "$nginx_port"
nginx_pid=${pids[-1]}

# 3. Berth's router, which prints its port once it listens.
targets=(direct nginx berth)
declare -A port=([direct]=$backend_port [nginx]=$nginx_port)
start_bench_proxy() {
  local name=$1 deadline=$((SECONDS + 10))
  shift
  "$bench_proxy" "$@" "127.0.0.1:$backend_port" >"$work/$name.port" 2>"$work/$name.err" &
  pids+=($!)
  until [ -s "$work/$name.port" ]; do
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$name.err" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { echo "proxy: bench-proxy printed no port" >&2; exit 1; }
    sleep 0.1
  done
  port[$name]=$(head -n1 "$work/$name.port")
  wait_ready "$name" "${pids[-1]}" "http://127.0.0.1:${port[$name]}/"
}
start_bench_proxy berth
berth_pid=${pids[-1]} berth_port=${port[berth]}
if [ "${MULTI_THREAD:-0}" = 1 ]; then
  start_bench_proxy berth-mt --multi-thread
  targets+=(berth-mt)
  berth_mt_pid=${pids[-1]}
fi
# 4. The control: nginx again, the same configuration on a port of its own.
if [ "${CONTROL:-0}" = 1 ]; then
  port[nginx-b]=$(free_port)
  start_nginx_proxy nginx-b "${port[nginx-b]}"
  targets+=(nginx-b)
  nginx_b_pid=${pids[-1]}
fi

# CPU time (user + system, in clock ticks) used so far by the processes `pids` (all threads).
cpu_ticks() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
  done
  echo "$total"
}
ticks_per_s=$(getconf CLK_TCK)
# Whose CPU time each target's figure counts: the backend's worker for direct, the proxy's
# workers (not the backend's) for the proxies.
declare -A cpu_pids
cpu_pids[direct]=$(pgrep -P "${pids[0]}" | xargs)
cpu_pids[nginx]=$(pgrep -P "$nginx_pid" | xargs)
cpu_pids[berth]=$berth_pid
if [ "${MULTI_THREAD:-0}" = 1 ]; then cpu_pids[berth-mt]=$berth_mt_pid; fi
if [ "${CONTROL:-0}" = 1 ]; then cpu_pids[nginx-b]=$(pgrep -P "$nginx_b_pid" | xargs); fi

# wrk's summary as "req/s p50_us p99_us errors requests", latencies in microseconds.
parse_wrk() {
  awk '
    function us(v) {
      if (v ~ /us$/) return v + 0
      if (v ~ /ms$/) return v * 1000
      if (v ~ /s$/) return v * 1000000
      return v * 60000000
    }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    $1 == "Requests/sec:" { rps = $2 }
    /Socket errors:/ { gsub(/[^0-9 ]/, " "); errors += $1 + $2 + $3 + $4 }
    /Non-2xx or 3xx responses:/ { errors += $NF }
    / requests in / { requests = $1 }
    END { printf "%.0f %.1f %.1f %d %d\n", rps, p50, p99, errors, requests }
  ' "$1"
}

# Rounds interleave the targets, so that load from anything else on the machine spreads over
# all three rather than falling on one; each figure is the median over the rounds. The
# proxies run in the reverse order every other round, so that none always runs right after
# another, and their ratios are also taken round by round (a slow round slows both).
declare -A rps p50 p99 errors spread cpu
proxies=("${targets[@]:1}")
reversed=()
for ((i = ${#proxies[@]} - 1; i >= 0; i--)); do reversed+=("${proxies[i]}"); done
for round in $(seq "$rounds"); do
  order=("${targets[@]}")
  if ((round % 2 == 0)); then order=(direct "${reversed[@]}"); fi
  for conns in "${conns_list[@]}"; do
    threads=$((conns == 1 ? 1 : 2))
    for target in "${order[@]}"; do
      url="http://127.0.0.1:${port[$target]}/"
      echo "==> round $round/$rounds: $target, $conns connection(s)" >&2
      wrk -t"$threads" -c"$conns" -d"${warmup}s" "$url" >/dev/null
      # shellcheck disable=SC2086 # a list of pids
      before=$(cpu_ticks ${cpu_pids[$target]})
      wrk -t"$threads" -c"$conns" -d"${duration}s" --latency -s bench/latency-histogram.lua \
        "$url" >"$work/wrk.txt"
      grep '^hist ' "$work/wrk.txt" >>"$work/hist-$target-$conns" || true
      # shellcheck disable=SC2086
      after=$(cpu_ticks ${cpu_pids[$target]})
      read -r run_rps run_p50 run_p99 run_errors run_requests < <(parse_wrk "$work/wrk.txt")
      cpu_us=$(awk -v t=$((after - before)) -v hz="$ticks_per_s" -v n="$run_requests" \
        'BEGIN { if (n) printf "%.1f", t / hz * 1e6 / n; else print "-" }')
      echo "$run_rps $run_p50 $run_p99 $run_errors $cpu_us" >>"$work/runs-$target-$conns"
    done
  done
done

# The profile comes from a run of its own, so that perf's overhead is in no figure above.
if [ "${PERF:-0}" = 1 ]; then
  echo "==> perf: Berth, 64 connections, ${duration} s" >&2
  # Software clock samples: virtual CPUs often have no hardware counters.
  perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$berth_pid" \
    -o "$work/perf.data" -- sleep "$duration" 2>/dev/null &
  perf_pid=$!
  wrk -t2 -c64 -d"${duration}s" "http://127.0.0.1:$berth_port/" >/dev/null
  wait "$perf_pid" || true
  unset perf_pid
  mkdir -p target/bench-proxy
  mv "$work/perf.data" target/bench-proxy/perf.data
  perf report -i target/bench-proxy/perf.data --no-children -g none --sort dso,symbol --stdio \
    2>/dev/null | grep -v '^$' >target/bench-proxy/perf-self.txt || true
  perf report -i target/bench-proxy/perf.data --children --sort symbol --stdio -g none \
    2>/dev/null | grep -v '^$' >target/bench-proxy/perf-children.txt || true
  echo "==> perf profile of Berth: target/bench-proxy/perf.data, perf-{self,children}.txt" >&2
fi

# The median of a column of a runs file (the upper one for an even count).
median() { sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int(NR / 2) + 1] }'; }
# "p50 p99 p99.9 over_1ms" of all the requests of all the rounds, pooled from the histograms
# wrk printed (bench/latency-histogram.lua): percentiles in microseconds, and the share of
# requests that took over a millisecond, in %; "- - - -" without any. About one request in
# a hundred, direct ones too, meets a stall of the machine's (a virtual CPU that is busy or
# asleep when it is woken), so the p99 sits on that step and moves with how often the
# machine stalled in a round. The pooled p99 counts every request; the median of the
# rounds' p99s (round_p99) is not moved by one round in which the machine stalled often.
pooled() {
  [ -s "$1" ] || { echo - - - -; return; }
  tr ' ' '\n' <"$1" | awk -F: 'NF == 2 { print $1, $2 }' | sort -n -k1,1 | awk '
    { v[NR] = $1; c[NR] = $2; total += $2; if ($1 > 1000) slow += $2 }
    END {
      n = split("50 99 99.9", p, " ")
      for (k = 1; k <= n; k++) {
        rank = p[k] / 100 * total; seen = 0
        for (i = 1; i < NR; i++) { seen += c[i]; if (seen >= rank) break }
        out = out v[i] " "
      }
      printf "%s%.2f\n", out, 100 * slow / total
    }'
}
declare -A p999 over_1ms round_p99
for conns in "${conns_list[@]}"; do
  for target in "${targets[@]}"; do
    key=$target,$conns runs=$work/runs-$target-$conns
    rps[$key]=$(median "$runs" 1)
    read -r "p50[$key]" "p99[$key]" "p999[$key]" "over_1ms[$key]" \
      < <(pooled "$work/hist-$target-$conns")
    round_p99[$key]=$(median "$runs" 3)
    cpu[$key]=$(median "$runs" 5)
    errors[$key]=$(awk '{ n += $4 } END { print n }' "$runs")
    spread[$key]=$(sort -n "$runs" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }')
  done
done

# (awk's `>` inside print or printf is a redirection, hence the `if`s.)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0) printf "%.2f", a / b; else print "-" }'; }
percent() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0) printf "%.0f%%", 100 * a / b; else print "-" }'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > b + 0) print a; else print b }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.0f", a - b }'; }

echo
echo "$rounds wrk runs of ${duration} s (each after ${warmup} s warm-up);" \
  "$(nproc) cores shared by wrk, proxy and backend; load average before: $load_before"
echo "nginx $("$nginx" -v 2>&1 | sed 's/.*nginx\///') (forwarding headers:" \
  "$([ "${NGINX_HEADERS:-same}" = none ] && echo none || echo "the same as Berth's");" \
  "worker_cpu_affinity: ${NGINX_AFFINITY:-none}), wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}')"
row='%-6s %-8s %8s %15s %7s %7s %8s %9s %7s %6s %11s %8s %11s\n'
# shellcheck disable=SC2059 # the format is $row
printf "$row" conns target req/s "(min-max)" p50_us p99_us p99.9_us round_p99 ">1ms_%" errors \
  "% of direct" "+p50_us" "cpu_us/req"
for conns in "${conns_list[@]}"; do
  for target in "${targets[@]}"; do
    key=$target,$conns
    # shellcheck disable=SC2059
    printf "$row" "$conns" "$target" "${rps[$key]}" "(${spread[$key]})" "${p50[$key]}" \
      "${p99[$key]}" "${p999[$key]}" "${round_p99[$key]}" "${over_1ms[$key]}" "${errors[$key]}" \
      "$(percent "${rps[$key]}" "${rps[direct,$conns]}")" \
      "$(added "${p50[$key]}" "${p50[direct,$conns]}")" "${cpu[$key]}"
  done
done
echo "req/s, cpu_us/req and round_p99: the median over the rounds; p50, p99, p99.9 and >1ms_%" \
  "(the share of requests over 1 ms): of all the requests of all the rounds"
echo "cpu_us/req: CPU time (user + system) per request of the backend (direct) or of the proxy" \
  "alone"
echo
# Each pair is "A B", A's figures over B's: Berth against nginx, and, when they run, the
# multi-threaded router against nginx and nginx against itself (the A/A control).
pairs=("berth nginx")
if [ "${MULTI_THREAD:-0}" = 1 ]; then pairs+=("berth-mt nginx"); fi
if [ "${CONTROL:-0}" = 1 ]; then pairs+=("nginx-b nginx"); fi
table='%-6s %-15s %7s %7s %7s %9s %15s\n'
# shellcheck disable=SC2059 # the format is $table
printf "$table" conns ratio req/s p99 p99.9 cpu/req "direct/faster"
for conns in "${conns_list[@]}"; do
  for pair in "${pairs[@]}"; do
    read -r a b <<<"$pair"
    # shellcheck disable=SC2059
    printf "$table" "$conns" "$a/$b" \
      "$(ratio "${rps[$a,$conns]}" "${rps[$b,$conns]}")" \
      "$(ratio "${p99[$a,$conns]}" "${p99[$b,$conns]}")" \
      "$(ratio "${p999[$a,$conns]}" "${p999[$b,$conns]}")" \
      "$(ratio "${cpu[$a,$conns]}" "${cpu[$b,$conns]}")" \
      "$(ratio "${rps[direct,$conns]}" "$(max "${rps[$a,$conns]}" "${rps[$b,$conns]}")")"
  done
done
# The same ratios taken within each round (A's run against B's of the same round), then the
# median over the rounds, with how many rounds A did at least as well.
echo
table='%-6s %-15s %18s %18s %18s\n'
# shellcheck disable=SC2059
printf "$table" conns ratio req/s p99 cpu/req
# "median (rounds where A was at least as good, of the rounds with figures)" for column
# COLUMN of the ratios in FILE, where BETTER (high or low) says which way is good.
paired() {
  local file=$1 column=$2 better=$3
  printf '%s (%s of %s)' "$(median "$file" "$column" | xargs printf '%.2f')" \
    "$(awk -v c="$column" -v b="$better" '(b == "high" && $c >= 1) || (b == "low" && $c <= 1)' \
      "$file" | wc -l)" "$(wc -l <"$file")"
}
for conns in "${conns_list[@]}"; do
  for pair in "${pairs[@]}"; do
    read -r a b <<<"$pair"
    ratios=$work/ratios-$a-$conns
    # A round in which either proxy has no figure (no requests answered) has no ratios.
    paste "$work/runs-$a-$conns" "$work/runs-$b-$conns" | awk '
      $1 + 0 && $6 + 0 && $3 + 0 && $8 + 0 && $5 + 0 && $10 + 0 { print $1 / $6, $3 / $8, $5 / $10 }
    ' >"$ratios"
    if [ -s "$ratios" ]; then
      # shellcheck disable=SC2059
      printf "$table" "$conns" "$a/$b" "$(paired "$ratios" 1 high)" "$(paired "$ratios" 2 low)" \
        "$(paired "$ratios" 3 low)"
    else
      # shellcheck disable=SC2059
      printf "$table" "$conns" "$a/$b" - - -
    fi
  done
done
echo "round by round: the median of the per-round ratios, and in how many rounds the first had" \
  "at least the second's req/s, at most its p99 and CPU"
if [ "${CONTROL:-0}" = 1 ]; then
  echo "nginx-b/nginx: the same nginx twice, so any distance from 1.00 is the machine's noise;" \
    "a berth/nginx ratio as close to 1 says nothing either way"
fi
# With one connection every request waits for the one before, so throughput is latency; the
# backend can only be a bottleneck under the 64-connection load.
best=$(max "${rps[nginx,64]:-0}" "${rps[berth,64]:-0}")
if [ -n "${rps[direct,64]:-}" ] &&
  awk -v d="${rps[direct,64]}" -v b="$best" 'BEGIN { exit !(d < 1.5 * b) }'; then
  echo "warning: the backend alone is less than 1.5x faster than the best proxy at 64" \
    "connections; it may be the bottleneck" >&2
fi
for key in "${!errors[@]}"; do
  if [ "${errors[$key]}" != 0 ]; then
    echo "warning: ${errors[$key]} socket errors or non-2xx responses for $key" >&2
  fi
done
