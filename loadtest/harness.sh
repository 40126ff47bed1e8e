# The load scripts' harness (sourced): a scratch directory, the processes started for
# the run (all stopped and removed on exit however the script ends), cbgate's config.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
start() { "$@" >>"$work/procs.log" 2>&1 & pids+=($!); }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

# gateway_config LISTEN_PORT ADMIN_PORT DATA_NAME [EXTRA_TOML] [SERVER_TOML]: project 1234
# signed with $SECRET, terminal requests to the stub on :19000.
gateway_config() {
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
${5:-}
[storage]
dir = "$work/$3"
[log]
level = "warn"
access = false
[[projects]]
id = 1234
secrets = ["$SECRET"]
method = "kassa24"
terminal_url = "http://127.0.0.1:19000/terminal"
${4:-}
EOF
}
