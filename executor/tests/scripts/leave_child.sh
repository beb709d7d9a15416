#!/bin/sh
# $1: file for the pid of a background child that keeps stdout open after this script exits.
sleep 300 &
echo $! > "$1"
echo "left a child behind"
