#!/bin/sh
# $1: file; $2: line appended to it.
printf '%s\n' "$2" >> "$1"
echo appended
