/* The register store: a table the caller owns, sorted by (device, register).
 * A read is a binary search; a new register shifts the entries after it
 * (at most `capacity` small moves, rare next to reads on a board). */
#include "wwep_server.h"

#include <string.h>

static uint32_t key_of(uint16_t device, uint8_t reg)
{
    return ((uint32_t)device << 8) | reg;
}

/* The index of the first entry whose key is >= key. */
static size_t lower_bound(const wwep_store *s, uint32_t key)
{
    size_t lo = 0, hi = s->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key_of(s->entries[mid].device, s->entries[mid].reg) < key) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

void wwep_store_init(wwep_store *store, wwep_entry *entries, size_t capacity)
{
    store->entries = entries;
    store->capacity = entries != NULL ? capacity : 0;
    store->count = 0;
}

int wwep_store_write(wwep_store *store, uint16_t device, uint8_t reg, uint16_t value)
{
    uint32_t key = key_of(device, reg);
    size_t at = lower_bound(store, key);
    wwep_entry *e = store->entries + at;
    if (at < store->count && key_of(e->device, e->reg) == key) {
        e->value = value;
        return WWEP_OK;
    }
    if (store->count >= store->capacity) return WWEP_ERR_FULL;
    memmove(e + 1, e, (store->count - at) * sizeof *e);
    e->device = device;
    e->reg = reg;
    e->value = value;
    store->count++;
    return WWEP_OK;
}

int wwep_store_read(const wwep_store *store, uint16_t device, uint8_t reg, uint16_t *value)
{
    uint32_t key = key_of(device, reg);
    size_t at = lower_bound(store, key);
    const wwep_entry *e = store->entries + at;
    if (at >= store->count || key_of(e->device, e->reg) != key) return WWEP_ERR_NOT_FOUND;
    *value = e->value;
    return WWEP_OK;
}
