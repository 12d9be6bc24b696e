#ifndef OUTBOX_RELAY_CNATS_SHIM_H
#define OUTBOX_RELAY_CNATS_SHIM_H
#include <nats/nats.h>
#endif
