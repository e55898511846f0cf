# Sourced by the test servers' scripts (redis.sh, s3.sh).

# wait_or_kill PID: waits up to 5 s for PID to end after it was asked to stop, then sends SIGKILL. A server
# started by a process that blocks SIGTERM (a test runner) inherits the block and would outlive the run.
wait_or_kill() {
    local pid=$1
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
}
