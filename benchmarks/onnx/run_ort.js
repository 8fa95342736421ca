#!/usr/bin/env node
// One ONNX Runtime (CPU) configuration for benchmarks/compare_torch.py, in its own process so
// that its peak RSS is its own: loads MODEL.onnx (input "x" [N, C, H, W] float32, "t" [N]
// float32, "y" [N] int64 when class-conditional; one output), runs it once to warm up and then
// --repeats timed times on the same input, writes the output as .npy and prints one JSON line:
//   {"times": [s...], "first_s": s, "load_s": s, "ort": version}
//   node run_ort.js --model M.onnx --input X.npy --batch N --t 90 --threads 2 --repeats 5
//                   --dump OUT.npy [--labels NUM_CLASSES]
// Session options: all graph optimisations, sequential execution, intra-op threads = --threads,
// inter-op 1 (what a user who wants the fastest CPU run would set).
"use strict";
const fs = require("fs");
const path = require("path");
const ort = require(path.join(__dirname, "node_modules", "onnxruntime-node"));

function args() {
  const a = {};
  const v = process.argv.slice(2);
  for (let i = 0; i < v.length; i += 2) {
    if (!v[i].startsWith("--") || i + 1 >= v.length) throw new Error(`bad argument list at '${v[i]}'`);
    a[v[i].slice(2)] = v[i + 1];
  }
  for (const k of ["model", "input", "batch", "dump"]) if (!(k in a)) throw new Error(`--${k} is required`);
  return a;
}

// A little-endian float32 C-order .npy (what numpy.save writes for float32 arrays).
function readNpy(file) {
  const b = fs.readFileSync(file);
  if (b.toString("latin1", 1, 6) !== "NUMPY") throw new Error(`${file}: not a .npy file`);
  const major = b[6];
  const hlen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + hlen;
  const header = b.toString("latin1", major === 1 ? 10 : 12, start);
  if (!/'descr': '<f4'/.test(header) || /'fortran_order': True/.test(header))
    throw new Error(`${file}: expected little-endian float32 in C order, header ${header.trim()}`);
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(",").filter((s) => s.trim()).map(Number);
  const data = new Float32Array(b.buffer.slice(b.byteOffset + start, b.byteOffset + b.length));
  return { shape, data };
}

function writeNpy(file, shape, data) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += " ".repeat(pad % 64) + "\n";
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1");
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([head, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

async function main() {
  const a = args();
  const batch = Number(a.batch), threads = Number(a.threads || 2), repeats = Number(a.repeats || 5);
  const t0 = process.hrtime.bigint();
  const session = await ort.InferenceSession.create(a.model, {
    executionProviders: ["cpu"],
    graphOptimizationLevel: "all",
    executionMode: "sequential",
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  const loadS = Number(process.hrtime.bigint() - t0) / 1e9;
  const x = readNpy(a.input);
  const per = x.shape.slice(1).reduce((p, q) => p * q, 1);
  const data = new Float32Array(batch * per);
  for (let n = 0; n < batch; ++n) data.set(x.data.subarray((n % x.shape[0]) * per, (n % x.shape[0] + 1) * per), n * per);
  const feeds = {
    x: new ort.Tensor("float32", data, [batch, ...x.shape.slice(1)]),
    t: new ort.Tensor("float32", new Float32Array(batch).fill(Number(a.t || 90)), [batch]),
  };
  if (a.labels) {
    const classes = Number(a.labels);
    feeds.y = new ort.Tensor("int64", BigInt64Array.from({ length: batch }, (_, i) => BigInt(i % classes)), [batch]);
  }
  const times = [];
  let firstS = 0, out = null;
  for (let r = 0; r <= repeats; ++r) {
    const s = process.hrtime.bigint();
    const res = await session.run(feeds);
    const e = Number(process.hrtime.bigint() - s) / 1e9;
    out = res[session.outputNames[0]];
    if (r === 0) firstS = e;
    else times.push(e);
  }
  writeNpy(a.dump, out.dims, out.data);
  console.log(JSON.stringify({ times, first_s: firstS, load_s: loadS, ort: ort.env.versions.common }));
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
