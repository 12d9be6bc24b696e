#!/usr/bin/env python3
"""moto's server (PyPI's moto[server]) for the SQS and SNS tests.

moto 5's SQS walks the whole queue on every send, and reads the clock through
datetime arithmetic for each message it looks at: a send costs time in
proportion to the queue's length, and a test that writes a few thousand
events spends minutes in the emulator. Three changes, none to what the
protocol answers:
- the approximate message counts (reported only by GetQueueAttributes, which
  the tests do not read) are the queue's length;
- the clock is read with time.time();
- a FIFO queue remembers the deduplication ids it took in a dict (moto looks
  through the messages still in the queue; SQS remembers ids for 5 minutes
  even after a delete, which the dict does too).
Usage: moto-server.py -H 127.0.0.1 -p PORT
"""
import sys
import time

from moto.sqs import models

models._unix_time = models.unix_time

models.unix_time = lambda dt=None: time.time() if dt is None else models.__dict__["_unix_time"](dt)
models.unix_time_millis = lambda dt=None: models.unix_time(dt) * 1000.0

models.Queue.approximate_number_of_messages = property(lambda self: len(self._messages))
models.Queue.approximate_number_of_messages_delayed = property(lambda self: 0)
models.Queue.approximate_number_of_messages_not_visible = property(lambda self: 0)

original_add = models.Queue.add_message


def add_message(self, message):
    if not (self.fifo_queue and message.deduplication_id):
        return original_add(self, message)
    seen = self.__dict__.setdefault("_outbox_dedup", {})
    first = seen.get(message.deduplication_id)
    if first is not None and (message.sent_timestamp - first) / 1000 < models.DEDUPLICATION_TIME_IN_SECONDS:
        return
    seen[message.deduplication_id] = message.sent_timestamp
    with self._messages_lock:
        self._messages.append(message)
        self._messages_lock.notify_all()


models.Queue.add_message = add_message

from moto.server import main  # noqa: E402

main(sys.argv[1:])
