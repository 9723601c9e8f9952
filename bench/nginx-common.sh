# Sourced by bench/proxy.sh and bench/proxy-instructions.sh: free ports, nginx run under a
# prefix of its own, the backend both proxies stand in front of, and waiting for an answer.
# The sourcing script sets `me` (its name, for messages), `work` (a scratch directory),
# `nginx` (nginx's path), `ready_timeout` (seconds) and the array `pids` (what its cleanup
# kills).

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# Polls until `url` answers "hello", for at most `ready_timeout` s; fails if the process `pid`
# has exited.
wait_ready() {
  local name=$1 pid=$2 url=$3 deadline=$((SECONDS + ready_timeout))
  until [ "$(curl -sf --max-time 5 "$url" 2>/dev/null)" = hello ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$me: $name exited" >&2
      cat "$work/$name.err" "$work/$name/error.log" 2>/dev/null >&2
      exit 1
    fi
    [ $SECONDS -lt $deadline ] || {
      echo "$me: $name did not answer $url in $ready_timeout s" >&2
      exit 1
    }
    sleep 0.1
  done
}

# Writes nginx's configuration `conf` for `name`, with everything (temp paths, pid, logs)
# under $work/NAME; Debian's build would otherwise use /var/lib/nginx and /var/log/nginx.
nginx_config() {
  local name=$1 conf=$2 dir=$work/$1
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$conf
CONF
}

# Runs the nginx configured as `name` in the foreground of a background job.
run_nginx() {
  local dir=$work/$1
  "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' &
  pids+=($!)
}

temp_paths() {
  local dir=$work/$1
  echo "client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;"
  echo "fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;"
}

# The http block of nginx as a reverse proxy (temp paths under NAME) listening on PORT,
# with keep-alive connections to the backend on BACKEND_PORT: the configuration the router
# is compared with. nginx is made to do what the router does to every request, which is
# also what a piku user's nginx does: pass the visitor's Host, and tell the app who asked
# (X-Forwarded-For/-Proto/-Host/-Port, Forwarded) under a request id that the response
# carries back too. NGINX_HEADERS=none leaves all that out (nginx then only proxies).
proxy_http() {
  local name=$1 backend_port=$2 port=$3 headers=
  if [ "${NGINX_HEADERS:-same}" != none ]; then
    headers='proxy_set_header Host $http_host;
      proxy_set_header X-Request-Id $request_id;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\"$http_host\"";
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Port $server_port;
      add_header X-Request-Id $request_id always;'
  fi
  cat <<CONF
http {
  $(temp_paths "$name")
  access_log off;
  keepalive_requests 1000000;
  upstream backend {
    server 127.0.0.1:$backend_port;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      $headers
    }
  }
}
CONF
}

# Starts the backend, nginx answering "hello" from memory with one worker, on
# `backend_port`, and waits for it. keepalive_requests is raised so that neither wrk nor
# the proxies' pools are made to reconnect every 1000 requests.
start_backend() {
  backend_port=$(free_port)
  nginx_config backend "worker_processes 1;
events { worker_connections 4096; }
http {
  $(temp_paths backend)
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$backend_port;
    location / { default_type text/plain; return 200 \"hello\n\"; }
  }
}"
  run_nginx backend
  wait_ready backend "${pids[-1]}" "http://127.0.0.1:$backend_port/"
}
