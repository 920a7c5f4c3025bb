/* The server: one transaction per connection, up to WWEP_SERVER_SLOTS
 * connections at once, stepped by the caller. Each step reads what every
 * open connection has without waiting on any one of them, so a silent or
 * trickling client holds only its own slot, until its time limit. */
#include "wwep_server.h"

#include <string.h>

#define SLOT_FREE 0
#define SLOT_READING 1

static const char *const TERMINATORS[] = {"", "\n", "\r\n"};

size_t wwep_answer(wwep_store *store, const unsigned char *message, size_t len,
                   int terminator, char *out)
{
    wwep_request req;
    wwep_reply reply;
    size_t n;
    memset(&reply, 0, sizeof reply);
    /* wwep_parse_request's rules are the server's: uppercase R/W, hex in
     * either case, exact length. */
    if (len > 0 && wwep_parse_request((const char *)message, len, &req) == WWEP_OK) {
        reply.device = req.device;
        reply.reg = req.reg;
        if (req.command == 'W') {
            reply.value = req.value;
            reply.accepted = wwep_store_write(store, req.device, req.reg, req.value) == WWEP_OK;
        } else {
            reply.accepted =
                wwep_store_read(store, req.device, req.reg, &reply.value) == WWEP_OK;
        }
    }
    n = wwep_format_reply(out, &reply);
    if (terminator < WWEP_TERM_NONE || terminator > WWEP_TERM_CRLF) terminator = WWEP_TERM_NONE;
    strcpy(out + n, TERMINATORS[terminator]);
    return n + strlen(TERMINATORS[terminator]);
}

void wwep_server_config_defaults(wwep_server_config *config)
{
    memset(config, 0, sizeof *config);
    config->timeout_ms = 5000;
    config->gap_ms = 100;
    config->tick_ms = 5;
}

int wwep_server_init(wwep_server *server, wwep_store *store, const wwep_clock *clock,
                     const wwep_server_config *config)
{
    if (server == NULL || store == NULL || clock == NULL || clock->now_ms == NULL)
        return WWEP_ERR_ARG;
    memset(server, 0, sizeof *server);
    server->store = store;
    server->clock = *clock;
    if (config != NULL) server->config = *config;
    else wwep_server_config_defaults(&server->config);
    if (server->config.tick_ms == 0) server->config.tick_ms = 1;
    /* The gap never outlasts the time limit. */
    if (server->config.gap_ms > server->config.timeout_ms)
        server->config.gap_ms = server->config.timeout_ms;
    return WWEP_OK;
}

int wwep_server_add_listener(wwep_server *server, const wwep_listener *listener)
{
    if (listener == NULL || listener->accept == NULL ||
        server->listener_count >= WWEP_SERVER_LISTENERS)
        return WWEP_ERR_ARG;
    server->listeners[server->listener_count++] = listener;
    return WWEP_OK;
}

size_t wwep_server_open(const wwep_server *server)
{
    size_t i, n = 0;
    for (i = 0; i < WWEP_SERVER_SLOTS; i++) n += server->slots[i].state != SLOT_FREE;
    return n;
}

static uint32_t now(const wwep_server *s)
{
    return s->clock.now_ms(s->clock.ctx);
}

static void finish(wwep_slot *slot)
{
    slot->conn.close(slot->conn.ctx);
    slot->state = SLOT_FREE;
}

/* Answers the slot's message as framed, tells the hook, closes. */
static void reply(wwep_server *s, wwep_slot *slot, const wwep_frame *frame)
{
    char out[WWEP_ANSWER_MAX];
    size_t len = wwep_answer(s->store, slot->buf, frame->len, frame->terminator, out);
    size_t sent = 0;
    while (sent < len) {
        int rc = slot->conn.write(slot->conn.ctx, (const unsigned char *)out + sent, len - sent);
        if (rc <= 0) {
            if (s->config.on_failure != NULL)
                s->config.on_failure(s->config.hook_ctx, slot->listener, slot->peer,
                                     rc < 0 ? rc : WWEP_ERR_IO);
            break;
        }
        sent += (size_t)rc;
    }
    if (sent == len && s->config.on_transaction != NULL) {
        wwep_transaction t;
        t.count = ++s->count;
        t.listener = slot->listener;
        t.peer = slot->peer;
        t.received = slot->buf;
        t.received_len = slot->len;
        t.reply = out;
        t.reply_len = len;
        s->config.on_transaction(s->config.hook_ctx, &t);
    }
    finish(slot);
}

/* Judges what the slot holds now that no more bytes will be waited for. */
static void judge(wwep_server *s, wwep_slot *slot)
{
    wwep_frame frame;
    wwep_frame_final(slot->buf, slot->len, &frame);
    reply(s, slot, &frame);
}

/* Reads what the connection has (waiting at most timeout_ms for the first
 * bytes), answers when the message is complete or its time is up. Returns
 * 1 if anything happened. */
static int advance(wwep_server *s, wwep_slot *slot, uint32_t timeout_ms)
{
    wwep_frame frame;
    uint32_t t;
    int moved = 0;
    for (;;) {
        int rc;
        if (slot->len == WWEP_MESSAGE_MAX) {
            judge(s, slot);
            return 1;
        }
        rc = slot->conn.read(slot->conn.ctx, slot->buf + slot->len, WWEP_MESSAGE_MAX - slot->len,
                             timeout_ms);
        timeout_ms = 0;
        if (rc == WWEP_ERR_TIMEOUT) break;
        if (rc < 0) {
            /* A reset, or a TLS handshake that failed: nobody to answer. */
            if (s->config.on_failure != NULL)
                s->config.on_failure(s->config.hook_ctx, slot->listener, slot->peer, rc);
            finish(slot);
            return 1;
        }
        if (rc == 0) {
            /* End of file or half-close: judge what came; nothing came, no reply. */
            if (slot->len == 0) finish(slot);
            else judge(s, slot);
            return 1;
        }
        slot->len += (size_t)rc;
        slot->last_byte_at = now(s);
        moved = 1;
        if (wwep_frame_message(slot->buf, slot->len, &frame) == WWEP_FRAME_COMPLETE) {
            reply(s, slot, &frame);
            return 1;
        }
    }
    t = now(s);
    if ((uint32_t)(t - slot->accepted_at) >= s->config.timeout_ms ||
        (slot->len > 0 && (uint32_t)(t - slot->last_byte_at) >= s->config.gap_ms)) {
        /* A silent connection's empty message is judged `X`, ending bare. */
        judge(s, slot);
        return 1;
    }
    return moved;
}

/* Milliseconds until the slot's gap or time limit ends. */
static uint32_t time_left(const wwep_server *s, const wwep_slot *slot, uint32_t t)
{
    uint32_t since_accept = t - slot->accepted_at;
    uint32_t left = since_accept >= s->config.timeout_ms ? 0 : s->config.timeout_ms - since_accept;
    if (slot->len > 0) {
        uint32_t since_byte = t - slot->last_byte_at;
        uint32_t gap = since_byte >= s->config.gap_ms ? 0 : s->config.gap_ms - since_byte;
        if (gap < left) left = gap;
    }
    return left;
}

static wwep_slot *free_slot(wwep_server *s)
{
    size_t i;
    for (i = 0; i < WWEP_SERVER_SLOTS; i++)
        if (s->slots[i].state == SLOT_FREE) return &s->slots[i];
    return NULL;
}

/* Takes one connection from listener i into a free slot, waiting at most
 * timeout_ms. Returns the slot, or NULL. */
static wwep_slot *accept_one(wwep_server *s, size_t i, uint32_t timeout_ms)
{
    wwep_slot *slot = free_slot(s);
    const wwep_listener *l = s->listeners[i];
    if (slot == NULL) return NULL;
    slot->peer[0] = '\0';
    if (l->accept(l->ctx, &slot->conn, slot->peer, sizeof slot->peer, timeout_ms) != WWEP_OK)
        return NULL;
    slot->state = SLOT_READING;
    slot->listener = i;
    slot->len = 0;
    slot->accepted_at = now(s);
    slot->last_byte_at = slot->accepted_at;
    return slot;
}

/* Accepts what the listeners have waiting, taking turns between them so a
 * busy port cannot keep the other out, until each has come up empty in a row
 * or WWEP_SERVER_SLOTS connections a listener have been taken: a flood of
 * clients answered at once never keeps a step from returning. Returns 1 if
 * any came. */
static int accept_waiting(wwep_server *s)
{
    size_t accepted = 0, empty = 0;
    while (empty < s->listener_count && accepted < WWEP_SERVER_SLOTS * s->listener_count &&
           free_slot(s) != NULL) {
        size_t i = s->next_listener;
        wwep_slot *slot;
        s->next_listener = (i + 1) % s->listener_count;
        slot = accept_one(s, i, 0);
        if (slot == NULL) {
            empty++;
            continue;
        }
        empty = 0;
        accepted++;
        /* A board writes its message right after connecting: read it now. */
        (void)advance(s, slot, 0);
    }
    return accepted > 0;
}

int wwep_server_step(wwep_server *server, uint32_t wait_ms)
{
    wwep_server *s = server;
    int moved;
    size_t i;
    moved = accept_waiting(s);
    for (i = 0; i < WWEP_SERVER_SLOTS; i++)
        if (s->slots[i].state != SLOT_FREE) moved |= advance(s, &s->slots[i], 0);
    if (!moved && wait_ms > 0) {
        /* Nothing to do now: wait for something, no longer than the nearest
         * gap or time limit, and a tick at a time while connections are
         * open or several listeners share the wait. */
        uint32_t t = now(s), budget = wait_ms;
        wwep_slot *earliest = NULL;
        for (i = 0; i < WWEP_SERVER_SLOTS; i++) {
            wwep_slot *slot = &s->slots[i];
            uint32_t left;
            if (slot->state == SLOT_FREE) continue;
            left = time_left(s, slot, t);
            if (earliest == NULL || left < time_left(s, earliest, t)) earliest = slot;
            if (left < budget) budget = left;
        }
        if ((earliest != NULL || s->listener_count > 1) && budget > s->config.tick_ms)
            budget = s->config.tick_ms;
        if (free_slot(s) != NULL && s->listener_count > 0) {
            wwep_slot *slot = accept_one(s, s->next_listener, budget);
            s->next_listener = (s->next_listener + 1) % s->listener_count;
            if (slot != NULL) (void)advance(s, slot, 0);
        } else if (earliest != NULL) {
            /* Every slot is taken: wait on the one whose time ends first. */
            (void)advance(s, earliest, budget);
        }
        /* A time limit that has passed while waiting is judged now. */
        t = now(s);
        for (i = 0; i < WWEP_SERVER_SLOTS; i++)
            if (s->slots[i].state != SLOT_FREE && time_left(s, &s->slots[i], t) == 0)
                (void)advance(s, &s->slots[i], 0);
    }
    return (int)wwep_server_open(s);
}

void wwep_server_stop(wwep_server *server)
{
    size_t i;
    for (i = 0; i < WWEP_SERVER_SLOTS; i++)
        if (server->slots[i].state != SLOT_FREE) judge(server, &server->slots[i]);
}
