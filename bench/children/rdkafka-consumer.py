"""A Kafka consumer in a process of its own, on librdkafka (confluent-kafka), for the latency
scenario: it prints, for every message, its `id` header and the wall-clock time it arrived, in
nanoseconds since the epoch. Usage: rdkafka-consumer.py BROKERS TOPIC GROUP ISOLATION.
"""
import sys
import time

from confluent_kafka import Consumer, KafkaException

brokers, topic, group, isolation = sys.argv[1:5]
consumer = Consumer(
    {
        "bootstrap.servers": brokers,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": isolation,
    }
)


def assigned(_consumer, partitions):
    print("READY", len(partitions), flush=True)


consumer.subscribe([topic], on_assign=assigned)
out = sys.stdout
try:
    while True:
        msg = consumer.poll(0.05)
        if msg is None:
            out.flush()
            continue
        now = time.time_ns()
        if msg.error():
            raise KafkaException(msg.error())
        for key, value in msg.headers() or []:
            if key == "id":
                out.write(f"{value.decode()}\t{now}\n")
                break
except KeyboardInterrupt:
    pass
finally:
    out.flush()
    consumer.close()
