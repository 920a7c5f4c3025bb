# Worst stack use of each public function, from GCC's -fcallgraph-info=su
# files (*.ci): its own frame plus the deepest chain of calls below it.
# Prints "function<TAB>file<TAB>bytes<TAB>notes", notes saying when a chain reaches an
# indirect call (a transport or listener callback: add the port's own use),
# a function defined in no given file (the C library or mbedTLS: add theirs)
# or a frame whose size is dynamic. With -v callbacks=REGEX, static functions
# whose names match (the callbacks a port's transport or listener is made of)
# are printed too, as "name (callback)".
function field(line, key,    rest) {
    rest = substr(line, index(line, key " \"") + length(key) + 2)
    return substr(rest, 1, index(rest, "\"") - 1)
}
/^node:/ {
    t = field($0, "title:")
    label = field($0, "label:")
    if (match(label, /\\n[0-9]+ bytes \([a-z,]+\)/)) {
        frame = substr(label, RSTART + 2, RLENGTH - 2)
        split(frame, parts, " ")
        bytes[t] = parts[1] + 0
        if (frame ~ /dynamic/ && frame !~ /bounded/) dynamic[t] = 1
        if (t !~ /:/) {
            public[t] = 1
            shown[t] = t
        } else if (callbacks != "") {
            name = t
            sub(/^.*:/, "", name)
            if (name ~ callbacks) {
                public[t] = 1
                shown[t] = name " (callback)"
            }
        }
        where = label
        sub(/^[^\\]*\\n/, "", where)
        sub(/:[0-9]+:[0-9]+\\n.*$/, "", where)
        sub(/^.*\//, "", where)
        file[t] = where
    }
}
/^edge:/ {
    s = field($0, "sourcename:")
    d = field($0, "targetname:")
    n = ++edges[s]
    edge[s, n] = d
}
function worst(f, depth,    i, d, w, best) {
    if (f in memo) return memo[f]
    if (f == "__indirect_call") { note_indirect = 1; return 0 }
    if (!(f in bytes)) { external[f] = 1; return 0 }
    if (f in dynamic) note_dynamic = 1
    if (depth > 64) { note_recursion = 1; return 0 }
    best = 0
    for (i = 1; i <= edges[f]; i++) {
        w = worst(edge[f, i], depth + 1)
        if (w > best) best = w
    }
    memo[f] = bytes[f] + best
    return memo[f]
}
END {
    for (f in public) {
        note_indirect = note_dynamic = note_recursion = 0
        delete memo
        delete external
        w = worst(f, 0)
        notes = ""
        if (note_indirect) notes = notes " + callbacks"
        ext = ""
        mbed = 0
        for (e in external) {
            if (e ~ /^mbedtls_/) mbed = 1
            else ext = ext (ext ? " " : "") e
        }
        if (mbed) ext = "mbedTLS" (ext ? " " : "") ext
        if (ext != "") notes = notes " + " ext
        if (note_dynamic) notes = notes " (dynamic)"
        if (note_recursion) notes = notes " (recursion)"
        printf "%s\t%s\t%d\t%s\n", shown[f], file[f], w, substr(notes, 2)
    }
}
