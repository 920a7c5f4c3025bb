#!/bin/sh
# The size table of docs/board-library.md, from the objects `make size-table`
# builds: flash (text, which holds rodata, plus data's initial values), RAM
# (data + bss), the state a caller owns (sizes of its types), and the worst
# stack use of each public function (mk/stack.awk over GCC's call graphs).
#
#   size-table.sh CORTEX_M_DIR PC_DIR
set -eu
cm=$1
pc=$2
here=$(dirname "$0")
: "${ARM_CC:=arm-none-eabi-gcc}" "${ARM_NM:=arm-none-eabi-nm}" "${ARM_SIZE:=arm-none-eabi-size}"
: "${CC:=cc}" "${SLOTS:=4}"

# "flash RAM" of objects: text + data, data + bss.
sizes() {
  tool=$1
  shift
  "$tool" -t "$@" | tail -1 | awk '{ print $1 + $2, $2 + $3 }'
}
# The size in bytes of a symbol in an object.
symbol() {
  hex=$("$1" -S "$2" | awk -v s="$3" '$4 == s { print $2 }')
  printf '%d' "0x$hex"
}
# Thousands with a comma, as the rest of the docs write them.
n() {
  printf '%s' "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/; ta'
}

set -- $(sizes "$ARM_SIZE" "$cm/wwep.o")
client_flash=$1 client_ram=$2
set -- $(sizes "$ARM_SIZE" "$cm/wwep_frame.o" "$cm/wwep_store.o" "$cm/wwep_server.o")
server_flash=$1 server_ram=$2
set -- $(sizes "$ARM_SIZE" "$cm/core.elf")
linked_flash=$1 linked_ram=$2
table=$(symbol "$ARM_NM" "$cm/state.o" store_table_400)
store=$(symbol "$ARM_NM" "$cm/state.o" store)
server=$(symbol "$ARM_NM" "$cm/state.o" server)
server1=$(symbol "$ARM_NM" "$cm/state1.o" server_1_slot)
reply=$(symbol "$ARM_NM" "$cm/state.o" reply)
set -- $(sizes size "$pc/wwep_core.o")
core_pc_flash=$1
set -- $(sizes size "$pc/wwep_tls.o")
tls_client_flash=$(($1 - core_pc_flash)) tls_client_ram=$2
set -- $(sizes size "$pc/wwep_tls_server.o")
tls_server_flash=$1 tls_server_ram=$2
tls_client=$(symbol nm "$pc/state.o" tls_client)
tls_server=$(symbol nm "$pc/state.o" tls_server)
tls_conn=$(symbol nm "$pc/state.o" tls_conn)

echo "Cortex-M4: $("$ARM_CC" --version | head -1), \`-mcpu=cortex-m4 -mthumb -Os"
echo "-ffunction-sections -fdata-sections\`, WWEP_SERVER_SLOTS=$SLOTS. PC: $("$CC" --version | head -1),"
echo "x86-64, \`-Os\`, mbedTLS's own code not counted. Bytes."
echo
echo "| part | flash | RAM | state the caller owns |"
echo "|---|---:|---:|---|"
echo "| client core (\`wwep.c\`) | $(n "$client_flash") | $client_ram | \`wwep_reply\` $reply |"
echo "| server core (\`wwep_frame.c\`, \`wwep_store.c\`, \`wwep_server.c\`) | $(n "$server_flash") | $server_ram | \`wwep_server\` $(n "$server") ($SLOTS slots), $(n "$server1") (1 slot) |"
echo "| both cores linked with newlib-nano (\`core.elf\`: every public function, and the C library routines they use) | $(n "$linked_flash") | $linked_ram | |"
echo "| store at N = 400 (\`static wwep_entry table[400]\`) | 0 | $(n $((table + store))) | the table $(n "$table"), \`wwep_store\` $store |"
echo "| mbedTLS client transport (\`wwep.c\` with \`WWEP_WITH_MBEDTLS\`, beyond the core; PC) | $(n "$tls_client_flash") | $tls_client_ram | \`wwep_tls\` $(n "$tls_client") |"
echo "| mbedTLS server transport (\`wwep_tls_server.c\`; PC) | $(n "$tls_server_flash") | $tls_server_ram | \`wwep_tls_server\` $(n "$tls_server") ($SLOTS slots; \`wwep_tls_conn\` $(n "$tls_conn") each) |"
echo
echo "Worst stack use of each public function: its own frame and the deepest chain"
echo "of calls below it. \"+ callbacks\" means a chain reaches the transport's or the"
echo "listener's callbacks (add the port's own use), \"+ NAME\" a C library or"
echo "mbedTLS function (add its use: a TLS handshake's is mbedTLS's, several KB). The"
echo "TLS transports' callbacks are listed too: a transaction over TLS runs them."
echo
echo "| function | file | stack | plus |"
echo "|---|---|---:|---|"
awk -f "$here/stack.awk" "$cm"/wwep.ci "$cm"/wwep_frame.ci "$cm"/wwep_store.ci "$cm"/wwep_server.ci |
  sort -t "$(printf '\t')" -k2,2 -k1,1 |
  awk -F '\t' '{ printf "| `%s` | %s | %d | %s |\n", $1, $2, $3, $4 }'
callbacks='^(tls_(connect|read|write|close)|conn_(read|write|close)|lst_accept)$'
awk -v callbacks="$callbacks" -f "$here/stack.awk" "$pc"/wwep_tls.ci "$pc"/wwep_tls_server.ci |
  awk -F '\t' '$1 ~ /^(wwep_tls|tls_|conn_|lst_)/' | sort -t "$(printf '\t')" -k2,2 -k1,1 |
  awk -F '\t' '{ printf "| `%s` | %s (PC) | %d | %s |\n", $1, $2, $3, $4 }'
