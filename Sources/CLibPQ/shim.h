#ifndef OUTBOX_RELAY_CLIBPQ_SHIM_H
#define OUTBOX_RELAY_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
