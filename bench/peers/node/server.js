// @tus/server for bench/run.py: the file store, or the S3 store when S3_ENDPOINT is set.
//
//   PORT=1080 DATA_DIR=./files node server.js
//   PORT=1080 S3_ENDPOINT=http://127.0.0.1:5000 S3_BUCKET=b node server.js
//
// The S3 store uses the same part size and part concurrency as aiotusd's defaults;
// its part spool goes to os.tmpdir(), so run it with TMPDIR set to a fresh directory.

import { FileStore } from "@tus/file-store";
import { S3Store } from "@tus/s3-store";
import { Server } from "@tus/server";

const MIB = 1024 * 1024;

function s3Store() {
  return new S3Store({
    partSize: 8 * MIB,
    maxConcurrentPartUploads: 4,
    s3ClientConfig: {
      bucket: process.env.S3_BUCKET,
      endpoint: process.env.S3_ENDPOINT,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId: "bench", secretAccessKey: "bench" },
    },
  });
}

const datastore = process.env.S3_ENDPOINT
  ? s3Store()
  : new FileStore({ directory: process.env.DATA_DIR });
const server = new Server({ path: "/files", datastore });
const listener = server.listen({ host: "127.0.0.1", port: Number(process.env.PORT) });
process.on("SIGTERM", () => listener.close(() => process.exit(0)));
