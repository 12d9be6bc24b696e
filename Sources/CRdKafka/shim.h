#ifndef OUTBOX_RELAY_CRDKAFKA_SHIM_H
#define OUTBOX_RELAY_CRDKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>
#endif
