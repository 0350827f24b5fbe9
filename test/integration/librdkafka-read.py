"""Reads topics from the beginning with librdkafka (confluent-kafka), read_committed, and prints
each record as a JSON line with its key, value and headers in base64: an independent client for
test/integration/kafka-compression.test.ts. Stops once `count` records were read and no more
came for a second, or after `timeout` seconds.

usage: python librdkafka-read.py BOOTSTRAP COUNT TIMEOUT_S TOPIC [TOPIC...]
"""
import base64
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException

bootstrap, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
topics = sys.argv[4:]
consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": f"librdkafka-read-{uuid.uuid4()}",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "isolation.level": "read_committed",
    "check.crcs": True,
})
consumer.subscribe(topics)
b64 = lambda b: None if b is None else base64.b64encode(b).decode("ascii")
read = 0
deadline = time.monotonic() + timeout
quiet_until = None
try:
    while time.monotonic() < deadline:
        if quiet_until is not None and time.monotonic() > quiet_until:
            break
        m = consumer.poll(0.2)
        if m is None:
            continue
        if m.error():
            raise KafkaException(m.error())
        read += 1
        print(json.dumps({
            "topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
            "key": b64(m.key()), "value": b64(m.value()),
            "headers": [[k, b64(v)] for k, v in (m.headers() or [])],
        }), flush=True)
        if read >= count:
            quiet_until = time.monotonic() + 1.0
finally:
    consumer.close()
