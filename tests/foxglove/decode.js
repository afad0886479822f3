// Decodes protobuf messages the way Foxglove does (protobufjs: Root.fromDescriptor of the channel's
// FileDescriptorSet), for tests/test_foxglove.py: one JSON line in ({schema, schemaName, data}, the
// schema and data in base64), one JSON line out (the message; bytes in base64, 64-bit integers as strings).
"use strict";
const readline = require("node:readline");
const protobuf = require("protobufjs");
const { FileDescriptorSet } = require("protobufjs/ext/descriptor");

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const request = JSON.parse(line);
  try {
    const set = FileDescriptorSet.decode(Buffer.from(request.schema, "base64"));
    const type = protobuf.Root.fromDescriptor(set).lookupType(request.schemaName);
    const message = type.decode(Buffer.from(request.data, "base64"));
    const object = type.toObject(message, { longs: String, bytes: String, defaults: true });
    process.stdout.write(JSON.stringify({ ok: true, message: object }) + "\n");
  } catch (error) {
    process.stdout.write(JSON.stringify({ ok: false, error: String(error) }) + "\n");
  }
});
