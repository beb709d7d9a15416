#!/bin/sh
# About 10 MB on stdout, then a last line (also on stdout, so its place is certain).
head -c 10000000 /dev/zero | tr '\0' 'x'
echo
echo flood-done
