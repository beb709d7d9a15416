#!/bin/sh
# $1 (optional): a file that gets one line per call.
if [ -n "$1" ]; then
    echo called >> "$1"
fi
echo "boom" >&2
exit 3
