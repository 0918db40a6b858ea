// Helper for bench/cachetests.py: the HTTP WG cache-tests suite (npm
// package http-cache-tests) driven without npm.
//
//   node cachetests.mjs origin SUITE_DIR [PORT]   the suite's origin server on
//       127.0.0.1 (port 0: any free one); prints "LISTENING <port>" once up.
//   node cachetests.mjs meta SUITE_DIR            the tests as JSON: suite,
//       id, name, kind, depends_on, browser_only, cdn_only.
//
// SUITE_DIR is the package's directory; both layouts are understood (0.4.x
// on npm: server/, tests/, cli.mjs; the GitHub tree: test-engine/...).
// The suite's own server listens on every interface and writes a pid file;
// this one binds loopback only and writes nothing.

import fs from 'fs'
import http from 'http'
import path from 'path'
import { pathToFileURL } from 'url'

const [command, suiteDir, portArg] = process.argv.slice(2)

function modern () {
  return fs.existsSync(path.join(suiteDir, 'test-engine'))
}

function load (rel) {
  return import(pathToFileURL(path.join(suiteDir, rel)).href)
}

async function origin () {
  const dir = modern() ? 'test-engine/server' : 'server'
  const handlers = {}
  for (const name of ['config', 'file', 'state', 'test']) {
    handlers[name] = (await load(`${dir}/handle-${name}.mjs`)).default
  }
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, 'http://localhost/')
    const segments = url.pathname.split('/')
    segments.shift()
    const dispatch = segments.shift()
    if (dispatch in handlers && dispatch !== 'file') {
      handlers[dispatch](segments, request, response)
    } else {
      handlers.file(url, request, response)
    }
  })
  server.listen(Number(portArg || 0), '127.0.0.1', () => {
    console.log(`LISTENING ${server.address().port}`)
  })
}

async function meta () {
  const tests = (await load('tests/index.mjs')).default
  if (!modern() && fs.existsSync(path.join(suiteDir, 'tests/surrogate-control.mjs'))) {
    // The 0.4.x CLI runs these too (cli.mjs pushes them).
    const surrogate = (await load('tests/surrogate-control.mjs')).default
    if (!tests.includes(surrogate)) tests.push(surrogate)
  }
  const out = []
  for (const suite of tests) {
    for (const test of suite.tests) {
      out.push({
        suite: suite.id,
        suiteName: suite.name,
        id: test.id,
        name: test.name,
        kind: test.kind || 'required',
        depends_on: test.depends_on || [],
        browser_only: test.browser_only === true,
        cdn_only: test.cdn_only === true
      })
    }
  }
  console.log(JSON.stringify(out))
}

if (command === 'origin') {
  await origin()
} else if (command === 'meta') {
  await meta()
} else {
  console.error('usage: node cachetests.mjs origin|meta SUITE_DIR [PORT]')
  process.exit(2)
}
