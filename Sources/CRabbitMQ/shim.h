#ifndef OUTBOX_RELAY_CRABBITMQ_SHIM_H
#define OUTBOX_RELAY_CRABBITMQ_SHIM_H
// rabbitmq-c (librabbitmq) with small helpers for the parts that are awkward
// from Swift: URL parsing into owned strings, the connect sequence, a
// publication with its properties and header table, and reading one frame.
// No policy here: the Swift sink decides what a result means.
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

typedef struct {
    int ok;
    /// 1 when retrying cannot help (bad URL, refused credentials, missing exchange).
    int permanent;
    char message[512];
} outbox_amqp_result;

static inline void outbox_amqp_reply_text(amqp_rpc_reply_t reply, const char *what, outbox_amqp_result *r) {
    r->ok = 0;
    switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        r->ok = 1;
        return;
    case AMQP_RESPONSE_NONE:
        snprintf(r->message, sizeof r->message, "%s: no reply", what);
        return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(r->message, sizeof r->message, "%s: %s", what, amqp_error_string2(reply.library_error));
        return;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = (amqp_connection_close_t *)reply.reply.decoded;
            snprintf(r->message, sizeof r->message, "%s: the server closed the connection: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (char *)m->reply_text.bytes);
            r->permanent = m->reply_code == 403 || m->reply_code == 530 || m->reply_code == 404;
        } else if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = (amqp_channel_close_t *)reply.reply.decoded;
            snprintf(r->message, sizeof r->message, "%s: the server closed the channel: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (char *)m->reply_text.bytes);
            r->permanent = m->reply_code == 403 || m->reply_code == 404;
        } else {
            snprintf(r->message, sizeof r->message, "%s: unexpected server method 0x%08X", what, reply.reply.id);
        }
        return;
    }
}

/// Parses `amqp://user:pass@host:port/vhost` (or amqps://) into `info`, whose
/// strings point into `scratch` (a copy the caller frees).
static inline int outbox_amqp_parse_url(const char *url, char **scratch, struct amqp_connection_info *info) {
    *scratch = strdup(url);
    amqp_default_connection_info(info);
    return amqp_parse_url(*scratch, info);
}

/// Opens a connection, logs in, opens channel 1 in confirm mode and checks
/// that `exchange` exists (passively). Returns NULL with `r` filled on failure.
static inline amqp_connection_state_t outbox_amqp_connect(const char *url, const char *exchange, int heartbeat_seconds,
                                                          int timeout_ms, const char *ca_file, outbox_amqp_result *r) {
    memset(r, 0, sizeof *r);
    char *scratch = NULL;
    struct amqp_connection_info info;
    if (outbox_amqp_parse_url(url, &scratch, &info) != AMQP_STATUS_OK) {
        free(scratch);
        r->permanent = 1;
        snprintf(r->message, sizeof r->message, "not an AMQP URL (amqp://user:password@host:port/vhost)");
        return NULL;
    }
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = NULL;
    if (info.ssl) {
        socket = amqp_ssl_socket_new(conn);
        if (socket && ca_file && amqp_ssl_socket_set_cacert(socket, ca_file) != AMQP_STATUS_OK) {
            snprintf(r->message, sizeof r->message, "cannot read the CA file");
            r->permanent = 1;
            goto fail;
        }
    } else {
        socket = amqp_tcp_socket_new(conn);
    }
    if (!socket) {
        snprintf(r->message, sizeof r->message, "cannot create a socket");
        goto fail;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    amqp_set_handshake_timeout(conn, &tv);
    amqp_set_rpc_timeout(conn, &tv);
    int s = amqp_socket_open_noblock(socket, info.host, info.port, &tv);
    if (s != AMQP_STATUS_OK) {
        snprintf(r->message, sizeof r->message, "cannot connect to %s:%d: %s", info.host, info.port, amqp_error_string2(s));
        goto fail;
    }
    // Advertise connection.blocked, so a broker under a resource alarm says so.
    amqp_table_entry_t capability_entries[2];
    capability_entries[0].key = amqp_cstring_bytes("connection.blocked");
    capability_entries[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capability_entries[0].value.value.boolean = 1;
    capability_entries[1].key = amqp_cstring_bytes("authentication_failure_close");
    capability_entries[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capability_entries[1].value.value.boolean = 1;
    amqp_table_entry_t client_entries[2];
    client_entries[0].key = amqp_cstring_bytes("capabilities");
    client_entries[0].value.kind = AMQP_FIELD_KIND_TABLE;
    client_entries[0].value.value.table.num_entries = 2;
    client_entries[0].value.value.table.entries = capability_entries;
    client_entries[1].key = amqp_cstring_bytes("connection_name");
    client_entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
    client_entries[1].value.value.bytes = amqp_cstring_bytes("outbox-relay");
    amqp_table_t client_properties = {2, client_entries};
    amqp_rpc_reply_t reply = amqp_login_with_properties(conn, info.vhost, 0, 131072, heartbeat_seconds,
                                                        &client_properties, AMQP_SASL_METHOD_PLAIN, info.user,
                                                        info.password);
    outbox_amqp_reply_text(reply, "login", r);
    if (!r->ok) {
        if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_CONNECTION_CLOSED) {
            // Older brokers close the socket on bad credentials.
            r->permanent = 1;
            snprintf(r->message, sizeof r->message, "login: the server closed the connection (refused credentials or vhost?)");
        }
        goto fail;
    }
    amqp_channel_open(conn, 1);
    outbox_amqp_reply_text(amqp_get_rpc_reply(conn), "channel.open", r);
    if (!r->ok) goto fail;
    amqp_confirm_select(conn, 1);
    outbox_amqp_reply_text(amqp_get_rpc_reply(conn), "confirm.select", r);
    if (!r->ok) goto fail;
    if (exchange && exchange[0]) {
        amqp_exchange_declare(conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("direct"), 1, 0, 0, 0,
                              amqp_empty_table);
        char what[300];
        snprintf(what, sizeof what, "exchange \"%.250s\"", exchange);
        outbox_amqp_reply_text(amqp_get_rpc_reply(conn), what, r);
        if (!r->ok) goto fail;
    }
    free(scratch);
    r->ok = 1;
    return conn;
fail:
    free(scratch);
    amqp_destroy_connection(conn);
    r->ok = 0;
    return NULL;
}

static inline amqp_bytes_t outbox_amqp_bytes(const void *bytes, size_t len) {
    amqp_bytes_t b;
    b.len = len;
    b.bytes = (void *)bytes;
    return b;
}

/// A persistent, mandatory publication on channel 1: `message_id`, content
/// type, and `count` UTF-8 string headers. Returns an AMQP_STATUS_* code.
static inline int outbox_amqp_publish(amqp_connection_state_t conn, const char *exchange, const char *routing_key,
                                      const void *body, size_t body_len, const char *message_id,
                                      const char *const *names, const char *const *values, int count) {
    amqp_table_entry_t *entries = count > 0 ? calloc((size_t)count, sizeof(amqp_table_entry_t)) : NULL;
    for (int i = 0; i < count; i++) {
        entries[i].key = amqp_cstring_bytes(names[i]);
        entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[i].value.value.bytes = amqp_cstring_bytes(values[i]);
    }
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof props);
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
                   AMQP_BASIC_HEADERS_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props.message_id = amqp_cstring_bytes(message_id);
    props.content_type = amqp_cstring_bytes("application/json");
    props.headers.num_entries = count;
    props.headers.entries = entries;
    int s = amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes(routing_key), 1, 0, &props,
                               outbox_amqp_bytes(body, body_len));
    free(entries);
    return s;
}

enum outbox_amqp_frame_kind {
    OUTBOX_AMQP_NONE = 0,   // nothing within the timeout
    OUTBOX_AMQP_ACK,
    OUTBOX_AMQP_NACK,
    OUTBOX_AMQP_RETURN,     // a basic.return; its header (message id) and body follow
    OUTBOX_AMQP_HEADER,     // a content header: message_id, body_size
    OUTBOX_AMQP_BODY,       // a body frame: its length
    OUTBOX_AMQP_BLOCKED,    // connection.blocked: text = reason
    OUTBOX_AMQP_UNBLOCKED,
    OUTBOX_AMQP_CLOSED,     // connection.close or channel.close from the server: code, text
    OUTBOX_AMQP_OTHER,
    OUTBOX_AMQP_ERROR,      // the connection failed: code = AMQP_STATUS_*, text
};

typedef struct {
    int kind;
    uint64_t delivery_tag;
    int multiple;
    int code;
    uint64_t body_size;
    char text[512];
    char routing_key[256];
    char message_id[256];
} outbox_amqp_frame;

static inline void outbox_amqp_copy(char *to, size_t size, amqp_bytes_t from) {
    size_t n = from.len < size - 1 ? from.len : size - 1;
    if (n) memcpy(to, from.bytes, n);
    to[n] = 0;
}

/// Reads one frame, waiting up to `timeout_ms` (0: only what is buffered or readable now).
static inline void outbox_amqp_next(amqp_connection_state_t conn, int timeout_ms, outbox_amqp_frame *out) {
    memset(out, 0, sizeof *out);
    amqp_frame_t frame;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    int s = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
    if (s == AMQP_STATUS_TIMEOUT) {
        out->kind = OUTBOX_AMQP_NONE;
        return;
    }
    if (s != AMQP_STATUS_OK) {
        out->kind = OUTBOX_AMQP_ERROR;
        out->code = s;
        snprintf(out->text, sizeof out->text, "%s", amqp_error_string2(s));
        return;
    }
    out->kind = OUTBOX_AMQP_OTHER;
    if (frame.frame_type == AMQP_FRAME_HEADER) {
        out->kind = OUTBOX_AMQP_HEADER;
        out->body_size = frame.payload.properties.body_size;
        amqp_basic_properties_t *p = (amqp_basic_properties_t *)frame.payload.properties.decoded;
        if (p && (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)) outbox_amqp_copy(out->message_id, sizeof out->message_id, p->message_id);
        return;
    }
    if (frame.frame_type == AMQP_FRAME_BODY) {
        out->kind = OUTBOX_AMQP_BODY;
        out->body_size = frame.payload.body_fragment.len;
        return;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD) return;
    void *d = frame.payload.method.decoded;
    switch (frame.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD:
        out->kind = OUTBOX_AMQP_ACK;
        out->delivery_tag = ((amqp_basic_ack_t *)d)->delivery_tag;
        out->multiple = ((amqp_basic_ack_t *)d)->multiple;
        break;
    case AMQP_BASIC_NACK_METHOD:
        out->kind = OUTBOX_AMQP_NACK;
        out->delivery_tag = ((amqp_basic_nack_t *)d)->delivery_tag;
        out->multiple = ((amqp_basic_nack_t *)d)->multiple;
        break;
    case AMQP_BASIC_RETURN_METHOD: {
        amqp_basic_return_t *m = (amqp_basic_return_t *)d;
        out->kind = OUTBOX_AMQP_RETURN;
        out->code = m->reply_code;
        outbox_amqp_copy(out->text, sizeof out->text, m->reply_text);
        outbox_amqp_copy(out->routing_key, sizeof out->routing_key, m->routing_key);
        break;
    }
    case AMQP_CONNECTION_BLOCKED_METHOD:
        out->kind = OUTBOX_AMQP_BLOCKED;
        outbox_amqp_copy(out->text, sizeof out->text, ((amqp_connection_blocked_t *)d)->reason);
        break;
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
        out->kind = OUTBOX_AMQP_UNBLOCKED;
        break;
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_t *m = (amqp_connection_close_t *)d;
        out->kind = OUTBOX_AMQP_CLOSED;
        out->code = m->reply_code;
        outbox_amqp_copy(out->text, sizeof out->text, m->reply_text);
        break;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
        amqp_channel_close_t *m = (amqp_channel_close_t *)d;
        out->kind = OUTBOX_AMQP_CLOSED;
        out->code = m->reply_code;
        outbox_amqp_copy(out->text, sizeof out->text, m->reply_text);
        break;
    }
    default:
        break;
    }
}

static inline int outbox_amqp_fd(amqp_connection_state_t conn) { return amqp_get_sockfd(conn); }

static inline int outbox_amqp_has_buffered(amqp_connection_state_t conn) {
    return amqp_frames_enqueued(conn) || amqp_data_in_buffer(conn);
}

/// `clean`: say goodbye first (the connection works; bounded by the RPC timeout).
static inline void outbox_amqp_close(amqp_connection_state_t conn, int clean) {
    if (clean) amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}

#endif
