#!/usr/bin/env bash
# The fault tests at full size (CI runs them smaller on every change, through
# scripts/test.sh): the SIGKILL loop with 100 kills per sink, a transaction of
# 1,000,000 outbox rows and one of 100 MiB of payload. Prints a summary line
# per fault (kills survived, events written, lost, duplicates, peak RSS).
#
#   bash scripts/faults.sh            # about 5 minutes here
set -euo pipefail
cd "$(dirname "$0")/.."
export OUTBOX_CRASH_KILLS=${OUTBOX_CRASH_KILLS:-100}
export OUTBOX_LARGE_ROWS=${OUTBOX_LARGE_ROWS:-1000000}
export OUTBOX_LARGE_PAYLOAD_MB=${OUTBOX_LARGE_PAYLOAD_MB:-100}
bash scripts/test.sh --filter "FaultTests|BrokerOutageTests" 2>&1 | tee /tmp/outbox-relay-faults.log | grep -E "^(crash loop|graceful|database restarts|hot standby|large transactions|broker)|✘|Test run"
