#!/usr/bin/env python3
"""A stock MQTT client for the edge's interop tests (tests/src/interop.rs): Python paho-mqtt
(1.6.1, Debian's python3-paho-mqtt) in MQTT 5 or 3.1.1 mode, over mutual TLS with the server
certificate verified against the fleet CA (host name included).

It connects, subscribes to the filters given (all in one SUBSCRIBE), and prints one JSON line per
event on stdout, flushed at once:
  {"event": "connack", "rc": 0, "session_present": false, "properties": {...}}
  {"event": "suback", "codes": [1, 135]}
  {"event": "message", "topic": "...", "payload_hex": "...", "qos": 1,
   "user_properties": [["k", "v"]], "properties": {...}}
  {"event": "disconnect", "rc": 0}
  {"event": "done"} after --count messages, {"event": "timeout"} after --timeout seconds.
Standard library and paho only. Exit status 0 unless the arguments are wrong.
"""

import argparse
import json
import ssl
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions


def emit(**event):
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def code(rc):
    """A reason code (paho's ReasonCodes in v5, an int in 3.1.1) as an int."""
    return getattr(rc, "value", rc)


def props(p):
    return p.json() if p is not None else {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--version", choices=["5", "311"], default="5")
    ap.add_argument("--client-id", default="")
    ap.add_argument("--sub", action="append", default=[], help="a filter (repeatable)")
    ap.add_argument("--qos", type=int, default=1)
    ap.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--session-expiry", type=int, default=None, help="MQTT 5 session expiry (s)")
    ap.add_argument("--clean", type=int, default=1, help="clean start / clean session (1 or 0)")
    args = ap.parse_args()

    v5 = args.version == "5"
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    if v5:
        client = mqtt.Client(client_id=args.client_id, protocol=protocol)
    else:
        client = mqtt.Client(client_id=args.client_id, clean_session=bool(args.clean),
                             protocol=protocol)
    client.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key,
                   cert_reqs=ssl.CERT_REQUIRED)
    state = {"messages": 0, "closed": False}

    def on_connect(c, _userdata, flags, rc, properties=None):
        emit(event="connack", rc=code(rc), session_present=bool(flags.get("session present")),
             properties=props(properties))
        if code(rc) != 0:
            return
        if args.sub:
            if v5:
                c.subscribe([(f, SubscribeOptions(qos=args.qos)) for f in args.sub])
            else:
                c.subscribe([(f, args.qos) for f in args.sub])

    def on_subscribe(_c, _userdata, _mid, granted, _properties=None):
        emit(event="suback", codes=[code(g) for g in granted])

    def on_message(_c, _userdata, msg):
        p = getattr(msg, "properties", None)
        user = [list(kv) for kv in getattr(p, "UserProperty", [])] if p is not None else []
        emit(event="message", topic=msg.topic, payload_hex=msg.payload.hex(), qos=msg.qos,
             user_properties=user, properties=props(p))
        state["messages"] += 1

    def on_disconnect(_c, _userdata, rc, _properties=None):
        emit(event="disconnect", rc=code(rc))
        state["closed"] = True

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect

    connect_props = None
    if v5 and args.session_expiry is not None:
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = args.session_expiry
    try:
        if v5:
            client.connect(args.host, args.port, keepalive=30, clean_start=bool(args.clean),
                           properties=connect_props)
        else:
            client.connect(args.host, args.port, keepalive=30)
    except (OSError, ssl.SSLError) as e:
        emit(event="error", error=str(e))
        return 0

    deadline = time.monotonic() + args.timeout
    while True:
        rc = client.loop(timeout=0.1)
        if args.count and state["messages"] >= args.count:
            emit(event="done")
            client.disconnect()
            return 0
        if state["closed"] or rc not in (mqtt.MQTT_ERR_SUCCESS,):
            if not state["closed"]:
                emit(event="disconnect", rc=rc)
            return 0
        if time.monotonic() > deadline:
            emit(event="timeout")
            client.disconnect()
            return 0


if __name__ == "__main__":
    sys.exit(main())
