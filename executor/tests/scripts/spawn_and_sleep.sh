#!/bin/sh
# $1: file for this script's pid; $2: file for its background child's pid.
# Starts a child that outlives a plain kill of this script, then waits forever.
# "started" is printed before the child's pid is written: once that file exists, the line is
# in the pipe.
echo $$ > "$1"
sleep 300 &
child=$!
echo started
echo $child > "$2"
sleep 300
