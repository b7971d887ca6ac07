// Upload a file with tus-js-client in one of its IETF draft protocols, as tests/test_ietf_draft_node.py
// asks: node draft_upload.mjs ENDPOINT PROTOCOL FILE CHUNK_SIZE MODE
//   MODE "whole": one upload from start to end;
//   MODE "with-data": the creation carries the first chunk (uploadDataDuringCreation);
//   MODE "abort-resume": abort after the first chunk, then resume from the upload's URL
//   with a new Upload, as an application that stored the URL does.
// Prints one JSON line per event ({"event": ...}) and exits 0 once the upload succeeded.
import { readFileSync } from 'node:fs'
import { Upload } from 'tus-js-client'

const [endpoint, protocol, file, chunkSize, mode] = process.argv.slice(2)
const data = readFileSync(file)
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }))

function upload(options) {
  return new Promise((resolve, reject) => {
    const u = new Upload(data, {
      protocol,
      chunkSize: Number(chunkSize),
      retryDelays: null,
      metadata: { filename: 'node.bin', filetype: 'application/octet-stream' },
      onError: reject,
      onSuccess: () => resolve(u),
      ...options(() => u),
    })
    u.start()
  })
}

async function abortAfterFirstChunk() {
  let aborted = null
  const first = new Promise((resolve, reject) => {
    const u = new Upload(data, {
      endpoint,
      protocol,
      chunkSize: Number(chunkSize),
      retryDelays: null,
      onError: reject,
      onSuccess: () => reject(new Error('the upload ended before it was aborted')),
      onChunkComplete: (_size, accepted) => {
        if (aborted === null) {
          aborted = accepted
          u.abort(false).then(() => resolve(u.url))
        }
      },
    })
    u.start()
  })
  const url = await first
  say('aborted', { url, offset: aborted })
  const resumed = await upload(() => ({ uploadUrl: url }))
  say('done', { url: resumed.url })
}

try {
  if (mode === 'abort-resume') {
    await abortAfterFirstChunk()
  } else {
    const done = await upload(() => ({ endpoint, uploadDataDuringCreation: mode === 'with-data' }))
    say('done', { url: done.url })
  }
} catch (error) {
  say('error', { message: String(error) })
  process.exit(1)
}
