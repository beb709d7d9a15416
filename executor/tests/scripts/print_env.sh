#!/bin/sh
# The environment the script sees.
env
