#!/bin/sh
# $1: counter file; $2: N. Fails until this is the N-th call.
count=$(cat "$1" 2>/dev/null || echo 0)
count=$((count + 1))
echo "$count" > "$1"
if [ "$count" -lt "$2" ]; then
    echo "call $count of $2: not yet" >&2
    exit 1
fi
echo "call $count: ok"
