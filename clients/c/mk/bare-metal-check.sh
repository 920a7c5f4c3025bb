#!/bin/sh
# Fails when Cortex-M objects need a symbol a bare-metal newlib build would not
# provide: anything but each other's functions, a few string routines and
# libgcc's helpers. Allocation (malloc, free, calloc, realloc) and stdio (the
# printf family) are named as such.
#
#   bare-metal-check.sh NM OBJECT...
set -eu
nm=$1
shift
allowed="memchr memcmp memcpy memmove memset strchr strcmp strcpy strlen strncmp strnlen"
defined=$("$nm" -g --defined-only "$@" | awk 'NF == 3 { print $3 }' | sort -u)
needed=$("$nm" -u "$@" | awk '$1 == "U" { print $2 }' | sort -u)
bad=
for symbol in $needed; do
  if printf '%s\n' "$defined" | grep -qx "$symbol"; then continue; fi
  case " $allowed " in *" $symbol "*) continue ;; esac
  case $symbol in
    __aeabi_* | __gnu_*) continue ;; # libgcc, always linked
    malloc | free | calloc | realloc | _malloc_r | _free_r) why="allocates" ;;
    *printf* | puts | putchar | fputs | fwrite | fopen) why="uses stdio" ;;
    *) why="is not on the bare-metal allow-list" ;;
  esac
  users=$(for o in "$@"; do "$nm" -u "$o" | grep -qw "$symbol" && basename "$o"; done | tr '\n' ' ')
  echo "bare-metal check: $symbol $why (needed by ${users% })" >&2
  bad=1
done
if [ -n "$bad" ]; then
  exit 1
fi
echo "bare-metal check: $# objects need only: $(printf '%s\n' "$needed" | grep -vxF "$defined" | tr '\n' ' ')"
