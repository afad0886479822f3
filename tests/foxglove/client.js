// The reference Foxglove WebSocket client (@foxglove/ws-protocol's FoxgloveClient over the `ws`
// package), driven by tests/test_foxglove.py: one JSON command per line on stdin, one JSON event per
// line on stdout. Usage: node client.js ws://127.0.0.1:PORT/foxglove?token=...
"use strict";
const readline = require("node:readline");
const WebSocket = require("ws");
const { FoxgloveClient } = require("@foxglove/ws-protocol");

const url = process.argv[2];
const client = new FoxgloveClient({ ws: new WebSocket(url, [FoxgloveClient.SUPPORTED_SUBPROTOCOL]) });

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function bytesOf(view) {
  return Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}

client.on("open", () => emit({ event: "open" }));
client.on("serverInfo", (info) => emit({ event: "serverInfo", info }));
client.on("status", (status) => emit({ event: "status", status }));
client.on("advertise", (channels) => emit({ event: "advertise", channels }));
client.on("unadvertise", (channelIds) => emit({ event: "unadvertise", channelIds }));
client.on("message", (message) =>
  emit({
    event: "message",
    subscriptionId: message.subscriptionId,
    timestamp: message.timestamp.toString(),
    data: bytesOf(message.data).toString("base64"),
  }),
);
client.on("error", (error) => emit({ event: "error", message: String(error && error.message ? error.message : error) }));
client.on("close", (event) => {
  emit({ event: "close", code: event.code, reason: String(event.reason || "") });
  process.exit(0);
});

const commands = {
  subscribe: (c) => emit({ event: "subscribed", id: client.subscribe(c.channelId), channelId: c.channelId }),
  unsubscribe: (c) => {
    client.unsubscribe(c.id);
    emit({ event: "unsubscribed", id: c.id });
  },
  advertise: (c) =>
    emit({
      event: "advertised",
      id: client.advertise({ topic: c.topic, encoding: c.encoding, schemaName: c.schemaName || "" }),
      topic: c.topic,
    }),
  publish: (c) => {
    client.sendMessage(c.channelId, new Uint8Array(Buffer.from(c.data, "base64")));
    emit({ event: "published", channelId: c.channelId });
  },
  close: () => client.close(),
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  commands[command.cmd](command);
});
process.stdin.on("end", () => client.close());
