#!/usr/bin/env python3
"""moto's server (PyPI's moto[server]) for the SQS and SNS tests and benchmark.

moto 5 recomputes an SQS queue's approximate message counts, walking every
message and reading the clock for each, on every SendMessage: a send costs
time in proportion to the queue's length, and a test that writes a few
thousand events spends minutes in the emulator. The counts are only reported
by GetQueueAttributes, which the tests do not read; here they are the queue's
length. Nothing else is changed. Usage: moto-server.py -H 127.0.0.1 -p PORT
"""
import sys

from moto.sqs import models

models.Queue.approximate_number_of_messages = property(lambda self: len(self._messages))
models.Queue.approximate_number_of_messages_delayed = property(lambda self: 0)
models.Queue.approximate_number_of_messages_not_visible = property(lambda self: 0)

from moto.server import main  # noqa: E402

main(sys.argv[1:])
