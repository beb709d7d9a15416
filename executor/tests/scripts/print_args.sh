#!/bin/sh
# Prints each argument on its own line, exactly as received.
for arg in "$@"; do
    printf '%s\n' "$arg"
done
