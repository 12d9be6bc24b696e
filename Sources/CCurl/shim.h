#ifndef OUTBOX_RELAY_CCURL_SHIM_H
#define OUTBOX_RELAY_CCURL_SHIM_H
// libcurl (Debian's libcurl4-openssl-dev) with non-variadic helpers for Swift:
// one POST request with its headers and body, the parts of the answer the
// sink needs (status, Retry-After, Location, the start of the body, the
// transport error), and the multi interface's completions. No policy here.
#include <curl/curl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    uint64_t token;
    long status;
    int result;  // CURLcode
    char retry_after[64];
    char location[256];
    char *response;       // the start of the answer's body, NUL-terminated (up to response_max bytes)
    size_t response_len;
    size_t response_max;
    char error[CURL_ERROR_SIZE];
    char *userpwd;        // AWS: "key:secret" for CURLOPT_AWS_SIGV4; freed with the request
} outbox_http_request;

static inline size_t outbox_http_on_body(char *data, size_t size, size_t count, void *user) {
    outbox_http_request *r = (outbox_http_request *)user;
    size_t n = size * count;
    size_t room = r->response_max - r->response_len;
    size_t take = n < room ? n : room;
    if (!take) return n;
    char *grown = realloc(r->response, r->response_len + take + 1);
    if (!grown) return n;
    r->response = grown;
    memcpy(r->response + r->response_len, data, take);
    r->response_len += take;
    r->response[r->response_len] = 0;
    return n;
}

static inline void outbox_http_copy_header(char *to, size_t size, const char *line, size_t len, size_t name_len) {
    const char *v = line + name_len;
    size_t n = len - name_len;
    while (n && (*v == ' ' || *v == '\t')) { v++; n--; }
    while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' ')) n--;
    if (n > size - 1) n = size - 1;
    memcpy(to, v, n);
    to[n] = 0;
}

static inline size_t outbox_http_on_header(char *line, size_t size, size_t count, void *user) {
    outbox_http_request *r = (outbox_http_request *)user;
    size_t n = size * count;
    if (n > 12 && strncasecmp(line, "retry-after:", 12) == 0) outbox_http_copy_header(r->retry_after, sizeof r->retry_after, line, n, 12);
    if (n > 9 && strncasecmp(line, "location:", 9) == 0) outbox_http_copy_header(r->location, sizeof r->location, line, n, 9);
    return n;
}

/// A POST of `body` (copied) to `url` with `count` "Name: value" header lines.
/// Redirects are not followed (a webhook URL that moved is a configuration error).
static inline outbox_http_request *outbox_http_request_new(const char *url, const void *body, size_t body_len,
                                                           const char *const *header_lines, int count,
                                                           long timeout_ms, long connect_timeout_ms, uint64_t token,
                                                           const char *ca_file) {
    outbox_http_request *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->easy = curl_easy_init();
    if (!r->easy) { free(r); return NULL; }
    r->token = token;
    r->response_max = 255;
    r->body = malloc(body_len ? body_len : 1);
    if (body_len) memcpy(r->body, body, body_len);
    for (int i = 0; i < count; i++) r->headers = curl_slist_append(r->headers, header_lines[i]);
    r->headers = curl_slist_append(r->headers, "Expect:");  // no 100-continue round trip
    curl_easy_setopt(r->easy, CURLOPT_URL, url);
    curl_easy_setopt(r->easy, CURLOPT_POST, 1L);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(r->easy, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms);
    curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(r->easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(r->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(r->easy, CURLOPT_USERAGENT, "outbox-relay");
    curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, outbox_http_on_body);
    curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_HEADERFUNCTION, outbox_http_on_header);
    curl_easy_setopt(r->easy, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, r->error);
    curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
    if (ca_file) curl_easy_setopt(r->easy, CURLOPT_CAINFO, ca_file);
    return r;
}

/// Signs the request with AWS Signature Version 4 (libcurl does it:
/// `provider` is "aws:amz:REGION:SERVICE"), with the key and secret as
/// "key:secret"; keeps up to `response_max` bytes of the answer.
static inline void outbox_http_request_sign(outbox_http_request *r, const char *provider, const char *userpwd,
                                            size_t response_max) {
    r->response_max = response_max;
    if (!provider) return;
    r->userpwd = strdup(userpwd);
    // libcurl signs every header line it is given, "Expect:" (which only removes
    // the header) included, and then sends none: the service's signature would
    // differ. Bodies here are far below the size that makes libcurl ask for 100-continue.
    struct curl_slist *kept = NULL;
    for (struct curl_slist *h = r->headers; h; h = h->next)
        if (strcmp(h->data, "Expect:") != 0) kept = curl_slist_append(kept, h->data);
    curl_slist_free_all(r->headers);
    r->headers = kept;
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(r->easy, CURLOPT_AWS_SIGV4, provider);
    curl_easy_setopt(r->easy, CURLOPT_USERPWD, r->userpwd);
}

static inline void outbox_http_request_free(outbox_http_request *r) {
    if (!r) return;
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->body);
    free(r->response);
    if (r->userpwd) {
        memset(r->userpwd, 0, strlen(r->userpwd));
        free(r->userpwd);
    }
    free(r);
}

/// Runs one request to its end on the calling thread (blocking); fills in status and result.
static inline void outbox_http_perform(outbox_http_request *r) {
    r->result = (int)curl_easy_perform(r->easy);
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
}

static inline CURLM *outbox_http_multi_new(long max_connections) {
    CURLM *m = curl_multi_init();
    if (m) {
        curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, max_connections);
        curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, max_connections);
    }
    return m;
}

/// The next finished request (removed from `multi`, its status and result
/// filled in), or NULL.
static inline outbox_http_request *outbox_http_next_done(CURLM *multi) {
    int left = 0;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        outbox_http_request *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        r->result = (int)msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &r->status);
        curl_multi_remove_handle(multi, msg->easy_handle);
        return r;
    }
    return NULL;
}

#endif
