// Qpid Proton C (Debian's libqpid-proton11-dev) through its I/O-free connection
// driver: the relay owns the socket and the loop; these helpers move bytes
// between the socket and the driver, turn Proton's events into settled
// outcomes, and build a message. No policy here: what an outcome means is the
// Swift transport's.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/connection_driver.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/message.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>

typedef struct outbox_amqp1 {
    pn_connection_driver_t driver;
    pn_link_t *sender;
    pn_link_t *dead_letter;
    int fd;
    int opened;      /* the broker attached the sender link(s) */
    int closed;      /* the transport is closed: the link is gone */
    int permanent;   /* refused for a reason no retry fixes (authentication, no such address) */
    char error[512];
} outbox_amqp1;

enum { OUTBOX_AMQP1_ACCEPTED = 0, OUTBOX_AMQP1_REJECTED = 1, OUTBOX_AMQP1_RELEASED = 2, OUTBOX_AMQP1_UNDELIVERABLE = 3 };

typedef struct outbox_amqp1_outcome {
    uint64_t tag;
    int kind;
    char why[256];
} outbox_amqp1_outcome;

static inline void outbox_amqp1_condition(outbox_amqp1 *c, pn_condition_t *condition, const char *what) {
    if (c->error[0] || !condition || !pn_condition_is_set(condition)) return;
    const char *name = pn_condition_get_name(condition);
    const char *description = pn_condition_get_description(condition);
    snprintf(c->error, sizeof c->error, "%s: %s%s%s", what, name ? name : "?", description ? ": " : "", description ? description : "");
    if (name && (strstr(name, "unauthorized-access") || strstr(name, "not-found") || strstr(name, "invalid-field") || strstr(name, "not-allowed")))
        c->permanent = 1;
}

/* A connection over `fd` (connected, non-blocking): SASL PLAIN with a user, else ANONYMOUS; TLS when `tls`. */
static inline outbox_amqp1 *outbox_amqp1_open(int fd, const char *container, const char *host, const char *user, const char *password,
                                              int tls, const char *ca_file, const char *address, const char *dead_letter_address,
                                              unsigned idle_timeout_ms) {
    outbox_amqp1 *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = fd;
    if (pn_connection_driver_init(&c->driver, NULL, NULL) != 0) { free(c); return NULL; }
    pn_connection_t *connection = c->driver.connection;
    pn_transport_t *transport = c->driver.transport;
    pn_connection_set_container(connection, container);
    pn_connection_set_hostname(connection, host);
    pn_sasl_t *sasl = pn_sasl(transport);
    if (user) {
        pn_connection_set_user(connection, user);
        pn_connection_set_password(connection, password ? password : "");
        pn_sasl_allowed_mechs(sasl, "PLAIN");
    } else {
        pn_sasl_allowed_mechs(sasl, "ANONYMOUS");
    }
    pn_sasl_set_allow_insecure_mechs(sasl, !tls);
    if (tls) {
        pn_ssl_domain_t *domain = pn_ssl_domain(PN_SSL_MODE_CLIENT);
        if (ca_file) pn_ssl_domain_set_trusted_ca_db(domain, ca_file);
        pn_ssl_domain_set_peer_authentication(domain, PN_SSL_VERIFY_PEER_NAME, NULL);
        pn_ssl_t *ssl = pn_ssl(transport);
        pn_ssl_init(ssl, domain, NULL);
        pn_ssl_set_peer_hostname(ssl, host);
        pn_ssl_domain_free(domain);
    }
    pn_transport_set_idle_timeout(transport, idle_timeout_ms);
    pn_connection_open(connection);
    pn_session_t *session = pn_session(connection);
    pn_session_open(session);
    c->sender = pn_sender(session, "outbox-relay");
    pn_terminus_set_address(pn_link_target(c->sender), address);
    pn_link_set_snd_settle_mode(c->sender, PN_SND_UNSETTLED);
    pn_link_open(c->sender);
    if (dead_letter_address) {
        c->dead_letter = pn_sender(session, "outbox-relay-dead-letter");
        pn_terminus_set_address(pn_link_target(c->dead_letter), dead_letter_address);
        pn_link_set_snd_settle_mode(c->dead_letter, PN_SND_UNSETTLED);
        pn_link_open(c->dead_letter);
    }
    return c;
}

/* Reads what the socket has, handles Proton's events (settled outcomes into `out`, at most `max`), writes what is due. */
static inline int outbox_amqp1_pump(outbox_amqp1 *c, int64_t now_ms, outbox_amqp1_outcome *out, int max) {
    int count = 0;
    for (int i = 0; i < 64 && !pn_connection_driver_read_closed(&c->driver); i++) {
        pn_rwbytes_t buffer = pn_connection_driver_read_buffer(&c->driver);
        if (buffer.size == 0) break;
        ssize_t n = recv(c->fd, buffer.start, buffer.size, 0);
        if (n > 0) { pn_connection_driver_read_done(&c->driver, (size_t)n); continue; }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
        if (!c->error[0]) snprintf(c->error, sizeof c->error, "connection %s", n == 0 ? "closed by the broker" : strerror(errno));
        pn_connection_driver_close(&c->driver);
        break;
    }
    pn_transport_tick(c->driver.transport, now_ms);
    pn_event_t *event;
    while (count < max && (event = pn_connection_driver_next_event(&c->driver))) {
        switch (pn_event_type(event)) {
        case PN_LINK_REMOTE_OPEN:
            if (pn_link_remote_target(c->sender) && pn_terminus_get_address(pn_link_remote_target(c->sender)) &&
                (!c->dead_letter || pn_link_remote_target(c->dead_letter)))
                c->opened = 1;
            break;
        case PN_DELIVERY: {
            pn_delivery_t *d = pn_event_delivery(event);
            uint64_t state = pn_delivery_remote_state(d);
            if (!state) break;
            outbox_amqp1_outcome *o = &out[count++];
            o->tag = (uint64_t)(uintptr_t)pn_delivery_get_context(d);
            o->why[0] = 0;
            pn_disposition_t *remote = pn_delivery_remote(d);
            pn_condition_t *condition = pn_disposition_condition(remote);
            if (condition && pn_condition_is_set(condition))
                snprintf(o->why, sizeof o->why, "%s%s%s", pn_condition_get_name(condition) ? pn_condition_get_name(condition) : "",
                         pn_condition_get_description(condition) ? ": " : "",
                         pn_condition_get_description(condition) ? pn_condition_get_description(condition) : "");
            if (state == PN_ACCEPTED) o->kind = OUTBOX_AMQP1_ACCEPTED;
            else if (state == PN_REJECTED) o->kind = OUTBOX_AMQP1_REJECTED;
            else if (state == PN_MODIFIED && pn_disposition_is_undeliverable(remote)) o->kind = OUTBOX_AMQP1_UNDELIVERABLE;
            else o->kind = OUTBOX_AMQP1_RELEASED;
            pn_delivery_settle(d);
            break;
        }
        case PN_LINK_REMOTE_CLOSE:
            outbox_amqp1_condition(c, pn_link_remote_condition(pn_event_link(event)), "the broker closed the link");
            pn_connection_close(c->driver.connection);
            break;
        case PN_SESSION_REMOTE_CLOSE:
            outbox_amqp1_condition(c, pn_session_remote_condition(pn_event_session(event)), "the broker closed the session");
            pn_connection_close(c->driver.connection);
            break;
        case PN_CONNECTION_REMOTE_CLOSE:
            outbox_amqp1_condition(c, pn_connection_remote_condition(pn_event_connection(event)), "the broker closed the connection");
            pn_connection_close(c->driver.connection);
            break;
        case PN_TRANSPORT_ERROR:
            outbox_amqp1_condition(c, pn_transport_condition(pn_event_transport(event)), "transport error");
            break;
        case PN_TRANSPORT_CLOSED:
            outbox_amqp1_condition(c, pn_transport_condition(pn_event_transport(event)), "transport closed");
            c->closed = 1;
            if (!c->error[0]) snprintf(c->error, sizeof c->error, "the connection closed");
            break;
        default:
            break;
        }
    }
    for (int i = 0; i < 64; i++) {
        pn_bytes_t buffer = pn_connection_driver_write_buffer(&c->driver);
        if (buffer.size == 0) break;
        ssize_t n = send(c->fd, buffer.start, buffer.size, MSG_NOSIGNAL);
        if (n > 0) { pn_connection_driver_write_done(&c->driver, (size_t)n); continue; }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
        if (!c->error[0]) snprintf(c->error, sizeof c->error, "writing failed: %s", strerror(errno));
        pn_connection_driver_close(&c->driver);
        break;
    }
    if (pn_connection_driver_finished(&c->driver)) c->closed = 1;
    return count;
}

static inline int outbox_amqp1_has_events(outbox_amqp1 *c) { return pn_connection_driver_has_event(&c->driver); }
static inline int outbox_amqp1_want_write(outbox_amqp1 *c) { return pn_connection_driver_write_buffer(&c->driver).size > 0; }
static inline int outbox_amqp1_credit(outbox_amqp1 *c, int dead_letter) {
    pn_link_t *link = dead_letter ? c->dead_letter : c->sender;
    return link ? pn_link_credit(link) : 0;
}

/* A durable message with a string message-id, group-id, subject, string application properties and a data-section body. */
static inline int outbox_amqp1_send(outbox_amqp1 *c, int dead_letter, uint64_t tag, const char *id, const char *group,
                                    const char *subject, const char *const *names, const char *const *values, int count,
                                    const void *body, size_t length) {
    pn_link_t *link = dead_letter ? c->dead_letter : c->sender;
    if (!link) return -1;
    pn_message_t *m = pn_message();
    pn_msgid_t message_id;
    message_id.type = PN_STRING;
    message_id.u.as_bytes = pn_bytes(strlen(id), id);
    pn_message_set_id(m, message_id);
    pn_message_set_durable(m, true);
    if (group && group[0]) pn_message_set_group_id(m, group);
    if (subject && subject[0]) pn_message_set_subject(m, subject);
    pn_message_set_content_type(m, "application/json");
    pn_data_t *properties = pn_message_properties(m);
    pn_data_put_map(properties);
    pn_data_enter(properties);
    for (int i = 0; i < count; i++) {
        pn_data_put_string(properties, pn_bytes(strlen(names[i]), names[i]));
        pn_data_put_string(properties, pn_bytes(strlen(values[i]), values[i]));
    }
    pn_data_exit(properties);
    pn_data_put_binary(pn_message_body(m), pn_bytes(length, (const char *)body));
    pn_message_set_inferred(m, true); /* a binary body goes as a data section: raw bytes for every consumer */
    char bytes[8];
    memcpy(bytes, &tag, 8);
    pn_delivery_t *d = pn_delivery(link, pn_dtag(bytes, 8));
    pn_delivery_set_context(d, (void *)(uintptr_t)tag);
    ssize_t sent = pn_message_send(m, link, NULL);
    pn_message_free(m);
    return sent < 0 ? (int)sent : 0;
}

static inline int64_t outbox_amqp1_tick(outbox_amqp1 *c, int64_t now_ms) { return pn_transport_tick(c->driver.transport, now_ms); }

/* Says goodbye when it can (the broker may be gone), frees the driver and closes the socket. */
static inline void outbox_amqp1_close(outbox_amqp1 *c, int polite) {
    if (polite) {
        pn_connection_close(c->driver.connection);
        outbox_amqp1_outcome ignored[16];
        outbox_amqp1_pump(c, 0, ignored, 16);
    }
    pn_connection_driver_destroy(&c->driver);
    close(c->fd);
    free(c);
}
